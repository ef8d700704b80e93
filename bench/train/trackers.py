"""Experiment trackers: a run's records mirrored, as they are written, to the tracker a researcher already reads.

The store's `metrics.jsonl` stays the record; a tracker gets a copy of every training and evaluation record at its
step (`train/<key>`, `eval/<key>`), the resolved configuration, the sample grids as images and the final summary,
under the store's run id as the tracker's run name. They go through accelerate's tracker classes, which the
relatives use, and stay offline: TensorBoard writes event files under the run's folder; MLflow writes to one local
database a results store (`<results>/mlflow/`, every run of the store in one experiment), not to a server. W&B and
trackio are named so that asking for them says so in one line instead of failing later.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from bench.errors import UsageError

SUPPORTED = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}  # tracker -> its packages
NOT_YET = ("wandb", "trackio")
FOLDER = "trackers"  # under the run's folder
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny"}  # what pip installs
MLFLOW_FOLDER, MLFLOW_RUN_ID, EXPERIMENT = "mlflow", "mlflow_run_id", "bench"  # the store's database; a run's id file


def parse_trackers(text: str) -> str:
    """`tracker=` as given (one name or a comma-separated list), checked and in canonical order."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name in NOT_YET:
            raise UsageError(f"tracker={name} is not wired yet; tensorboard and mlflow are (offline, beside the run), "
                             "and every record is in the run's metrics.jsonl")
        if name not in SUPPORTED:
            raise UsageError(f"unknown tracker '{name}'; choose from: {', '.join(SUPPORTED)} (or leave tracker unset)")
    return ",".join(sorted(set(names)))


def check_installed(names: str) -> None:
    """A tracker whose package is missing is refused before any training, with the command that installs it."""
    for name in filter(None, names.split(",")):
        if not any(importlib.util.find_spec(package) for package in SUPPORTED[name]):
            raise UsageError(f"tracker={name} needs the {SUPPORTED[name][0]} package, which is not installed: "
                             f"pip install -e \".[trackers]\" (or pip install {PACKAGES[name]})")


def check_ready(names: str, results: Path) -> None:
    """Before anything is built: each tracker installed, and MLflow's database folder in the results store one that
    can be written (a file in its place, or a folder that is not writable, would fail after training began)."""
    check_installed(names)
    if "mlflow" not in names.split(","):
        return
    store = mlflow_store(results)
    nearest = next(path for path in (store, *store.parents) if path.exists())
    if not (nearest.is_dir() and os.access(nearest, os.W_OK)):
        raise UsageError(f"tracker=mlflow keeps its database in {store}, but {nearest} is not a folder this user can "
                         "write to; point results.dir= at a writable store or remove what is in the way")


def mlflow_store(results: Path) -> Path:
    """The results store's MLflow folder: one database for every run of the store."""
    return Path(results) / MLFLOW_FOLDER


class Trackers:
    """The run's trackers, open for its lifetime on the main process. A resumed run continues its tracker run: the
    same TensorBoard folder and name, the same MLflow run (its id is kept in the run's trackers folder)."""

    def __init__(self, names: str, run, params: dict, folder: Path | None = None):
        """`run`: the store's run; `params`: its resolved configuration as `section.key` values (config.flatten), the
        hyperparameters; `folder`: where its tracker files go (its trackers folder unless given)."""
        from accelerate.tracking import MLflowTracker, TensorBoardTracker

        check_installed(names)
        wanted = names.split(",")
        self.folder = folder or run.dir / FOLDER
        self.active, self.mlflow_uri = [], None
        if "tensorboard" in wanted:
            self.active.append(TensorBoardTracker(run.id, str(self.folder)))
        if "mlflow" in wanted:
            import mlflow

            store = mlflow_store(run.store.root)
            store.mkdir(exist_ok=True)
            self.mlflow_uri = uri = f"sqlite:///{store / 'mlflow.db'}"
            mlflow.set_tracking_uri(uri)
            kept = self.folder / MLFLOW_RUN_ID
            self.active.append(MLflowTracker(EXPERIMENT, str(store / "artifacts"), run_name=run.id,
                                             run_id=kept.read_text() if kept.exists() else None))
        for tracker in self.active:
            tracker.start()
            if tracker.name == "mlflow":
                self.folder.mkdir(parents=True, exist_ok=True)
                (self.folder / MLFLOW_RUN_ID).write_text(tracker.active_run.info.run_id)
            # Every tracker's hyperparameter table takes scalars and strings.
            tracker.store_init_configuration({key: value if isinstance(value, int | float | str | bool) else str(value)
                                              for key, value in params.items()})

    def log(self, record: dict) -> None:
        """One record of metrics.jsonl: its numbers, under its kind, at its step."""
        values = {f"{record['kind']}/{key}": value for key, value in record.items()
                  if key not in ("kind", "step") and isinstance(value, int | float) and not isinstance(value, bool)}
        for tracker in self.active:
            tracker.log(values, step=record["step"])

    def log_grid(self, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        image = np.asarray(Image.open(path).convert("RGB"))
        for tracker in self.active:
            if tracker.name == "mlflow":
                import mlflow

                mlflow.log_image(image, key="samples", step=step)
            else:
                tracker.log_images({"samples": image[None]}, step=step, dataformats="NHWC")

    def finish(self, summary: dict | None) -> None:
        """Close the trackers, with the final summary's metrics where the run has one."""
        if summary:
            self.log({"kind": "summary", "step": summary.get("steps", 0), **summary.get("metrics", {})})
        for tracker in self.active:
            tracker.finish()

    def where(self) -> str:
        """The line that says where the logs went and how to open them."""
        places = [f"{self.folder} (tensorboard --logdir {self.folder})" for t in self.active if t.name == "tensorboard"]
        if self.mlflow_uri:
            places.append(f"{self.mlflow_uri} (mlflow ui --backend-store-uri {self.mlflow_uri})")
        return "tracker logs: " + "; ".join(places)


def export(run, names: str, params: dict) -> str:
    """A finished run of the store sent to trackers afterwards: its records, grids and summary, as they would have
    been mirrored live. Written beside the run's folder of trackers and moved in when complete; a run already sent
    to a tracker is refused rather than doubled."""
    folder = run.dir / FOLDER
    for name, kept in (("tensorboard", folder / run.id), ("mlflow", folder / MLFLOW_RUN_ID)):
        if name in names.split(",") and kept.exists():
            raise UsageError(f"run {run.id} was already sent to {name} ({kept}); remove that to export it again")
    partial = run.dir / f".{FOLDER}.exporting"
    shutil.rmtree(partial, ignore_errors=True)
    trackers = Trackers(names, run, params, folder=partial)
    grids = {int(path.stem.split("_")[1]): path for path in (run.dir / "samples").glob("step_*.png")}
    for record in run.records():
        trackers.log(record)
        if record["kind"] == "eval" and record["step"] in grids:
            trackers.log_grid(grids[record["step"]], record["step"])
    trackers.finish(run.summary)
    folder.mkdir(exist_ok=True)
    for entry in partial.iterdir():
        entry.rename(folder / entry.name)
    partial.rmdir()
    trackers.folder = folder
    return trackers.where()
