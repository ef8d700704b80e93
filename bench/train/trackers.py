"""Experiment trackers: a run's records mirrored, as they are written, to the tracker a researcher already reads.

The store's `metrics.jsonl` stays the record; a tracker gets a copy of every training and evaluation record at its
step (`train/<key>`, `eval/<key>`), the resolved configuration, the sample grids as images and the final summary,
under the store's run id as the tracker's run name. They go through accelerate's tracker classes, which the
relatives use, and stay offline: TensorBoard and W&B write files under the run's folder (W&B in offline mode unless
WANDB_MODE says otherwise, synced later with `wandb sync`); MLflow and trackio write to one local database a results
store (`<results>/mlflow/`, `<results>/trackio/`), every run of the store in one project, not to a server.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from bench.errors import UsageError

# tracker -> the modules any of which serves it, and what pip installs
SUPPORTED = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "wandb": ("wandb",),
             "trackio": ("trackio",)}
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny", "wandb": "wandb", "trackio": "trackio"}
FOLDER = "trackers"  # under the run's folder
STORE_FOLDERS = {"mlflow": "mlflow", "trackio": "trackio"}  # trackers that keep one database a results store
EXPERIMENT = "bench"  # the MLflow experiment, the W&B and trackio project
# What a run's trackers folder holds once the run was sent to each tracker; MLflow's file holds its run id.
SENT = {"tensorboard": None, "mlflow": "mlflow_run_id", "wandb": "wandb", "trackio": "trackio_run"}  # None: the run id


def parse_trackers(text: str) -> str:
    """`tracker=` as given (one name or a comma-separated list), checked and in canonical order."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
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
    """Before anything is built: each tracker installed, and the database folder in the results store of those that
    keep one, one that can be written (a file in its place, or a folder that is not writable, would fail after
    training began)."""
    check_installed(names)
    for name in filter(None, names.split(",")):
        if name not in STORE_FOLDERS:
            continue
        store = store_folder(name, results)
        nearest = next(path for path in (store, *store.parents) if path.exists())
        if not (nearest.is_dir() and os.access(nearest, os.W_OK)):
            raise UsageError(f"tracker={name} keeps its database in {store}, but {nearest} is not a folder this user "
                             "can write to; point results.dir= at a writable store or remove what is in the way")


def store_folder(name: str, results: Path) -> Path:
    """The results store's folder of an MLflow or trackio database: one for every run of the store. trackio's is
    TRACKIO_DIR where the user set it."""
    if name == "trackio" and os.environ.get("TRACKIO_DIR"):
        return Path(os.environ["TRACKIO_DIR"])
    return Path(results) / STORE_FOLDERS[name]


def mlflow_uri(results: Path) -> str:
    return f"sqlite:///{store_folder('mlflow', results) / 'mlflow.db'}"


class Trackers:
    """The run's trackers, open for its lifetime on the main process. A resumed run continues its tracker run: the
    same TensorBoard folder and name, the same MLflow run (its id is kept in the run's trackers folder), the same W&B
    run id and trackio run name."""

    def __init__(self, names: str, run, params: dict, folder: Path | None = None):
        """`run`: the store's run; `params`: its resolved configuration as `section.key` values (config.flatten), the
        hyperparameters; `folder`: where its tracker files go (its trackers folder unless given)."""
        check_installed(names)
        self.folder, self.store = folder or run.dir / FOLDER, run.store.root
        # W&B's offline files of a killed process can be empty (its service buffers them), so a resumed W&B run
        # starts again from the store's records up to the checkpoint, in a second offline copy of the same run id.
        resumed_wandb = (self.folder / SENT["wandb"]).exists()
        # trackio writes its queue from a thread every half second, so a killed process loses its last records;
        # a resumed run sends what the store has and trackio's database lacks.
        resumed_trackio = (self.folder / SENT["trackio"]).exists()
        self.active = [self._open(name, run) for name in names.split(",")]
        for tracker in self.active:
            tracker.start()
            if tracker.name in ("mlflow", "trackio"):
                self.folder.mkdir(parents=True, exist_ok=True)
                (self.folder / SENT[tracker.name]).write_text(tracker.active_run.info.run_id if tracker.name == "mlflow"
                                                              else run.id)
            # Every tracker's hyperparameter table takes scalars and strings.
            tracker.store_init_configuration({key: value if isinstance(value, int | float | str | bool) else str(value)
                                              for key, value in params.items()})
        if resumed_wandb:
            self.replay(run, [tracker for tracker in self.active if tracker.name == "wandb"])
        if resumed_trackio:
            self.replay(run, [tracker for tracker in self.active if tracker.name == "trackio"], trackio_held(run.id))

    def replay(self, run, trackers: list | None = None, held: frozenset = frozenset()) -> None:
        """The store's records of the run and its sample grids, sent as a live mirror would have sent them, less
        those `held` already ((step, kind) pairs; a grid's kind is "samples")."""
        grids = {int(path.stem.split("_")[1]): path for path in (run.dir / "samples").glob("step_*.png")}
        for record in run.records():
            step = record["step"]
            if (step, record["kind"]) not in held:
                self.log(record, trackers)
            if record["kind"] == "eval" and step in grids and (step, "samples") not in held:
                self.log_grid(grids[step], step, trackers)

    def _open(self, name: str, run):
        """The accelerate tracker of that name for this run, offline, named by the store's run id."""
        from accelerate import tracking

        if name == "tensorboard":
            return tracking.TensorBoardTracker(run.id, str(self.folder))
        if name == "wandb":
            import wandb

            self.folder.mkdir(parents=True, exist_ok=True)
            # The store's run id is also W&B's id: a resumed run is the same W&B run; offline unless asked otherwise.
            return tracking.WandBTracker(EXPERIMENT, name=run.id, id=run.id, resume="allow", dir=str(self.folder),
                                         mode=os.environ.get("WANDB_MODE", "offline"),
                                         settings=wandb.Settings(quiet=True))
        store = store_folder(name, self.store)
        store.mkdir(parents=True, exist_ok=True)
        if name == "trackio":
            # trackio reads its folder once, when first imported.
            os.environ["TRACKIO_DIR"] = str(store)
            return tracking.TrackioTracker(EXPERIMENT, name=run.id, resume="allow", embed=False)
        import mlflow

        mlflow.set_tracking_uri(mlflow_uri(self.store))
        kept = self.folder / SENT["mlflow"]
        return tracking.MLflowTracker(EXPERIMENT, str(store / "artifacts"), run_name=run.id,
                                      run_id=kept.read_text() if kept.exists() else None)

    def log(self, record: dict, trackers: list | None = None) -> None:
        """One record of metrics.jsonl: its numbers, under its kind, at its step (to every tracker unless given)."""
        values = {f"{record['kind']}/{key}": value for key, value in record.items()
                  if key not in ("kind", "step") and isinstance(value, int | float) and not isinstance(value, bool)}
        for tracker in self.active if trackers is None else trackers:
            tracker.log(values, step=record["step"])

    def log_grid(self, path: Path, step: int, trackers: list | None = None) -> None:
        import numpy as np
        from PIL import Image

        image = np.asarray(Image.open(path).convert("RGB"))
        for tracker in self.active if trackers is None else trackers:
            if tracker.name == "mlflow":
                import mlflow

                mlflow.log_image(image, key="samples", step=step)
            elif tracker.name == "trackio":
                import trackio

                tracker.log({"samples": trackio.Image(image)}, step=step)
            elif tracker.name == "wandb":
                tracker.log_images({"samples": [image]}, step=step)
            else:
                tracker.log_images({"samples": image[None]}, step=step, dataformats="NHWC")

    def finish(self, summary: dict | None) -> None:
        """Close the trackers, with the final summary's metrics where the run has one."""
        if summary:
            self.log({"kind": "summary", "step": summary.get("steps", 0), **summary.get("metrics", {})})
        for tracker in self.active:
            tracker.finish()

    def fail(self) -> None:
        """Close the trackers of a run that raised, marked failed where the tracker has the notion, so that none is
        left open as if still running."""
        for tracker in self.active:
            if tracker.name == "mlflow":
                import mlflow

                mlflow.end_run(status="FAILED")
            elif tracker.name == "wandb":
                tracker.run.finish(exit_code=1)
            else:
                tracker.finish()

    def where(self) -> str:
        """The line that says where the logs went and how to open or sync them."""
        places = []
        for tracker in self.active:
            if tracker.name == "tensorboard":
                places.append(f"{self.folder} (tensorboard --logdir {self.folder})")
            elif tracker.name == "wandb":
                # wandb/offline-run-<time>-<id>: one a start of the run
                local = self.folder / "wandb" / Path(tracker.run.dir).parent.name
                places.append(f"{local} (wandb sync {local})" if tracker.run.settings.mode == "offline"
                              else tracker.run.url)
            elif tracker.name == "trackio":
                folder = store_folder("trackio", self.store)
                places.append(f"{folder} (TRACKIO_DIR={folder} trackio show --project {EXPERIMENT})")
            else:
                uri = mlflow_uri(self.store)
                places.append(f"{uri} (mlflow ui --backend-store-uri {uri})")
        return "tracker logs: " + "; ".join(places)


def trackio_held(name: str) -> frozenset:
    """The (step, kind) pairs trackio's database holds for the run: `train`, `eval`, `summary` from the metrics'
    prefixes, `samples` for a grid."""
    from trackio.sqlite_storage import SQLiteStorage

    return frozenset((row["step"], key.split("/")[0]) for row in SQLiteStorage.get_logs(EXPERIMENT, name)
                     for key in row if "/" in key or key == "samples")


def export(run, names: str, params: dict) -> str:
    """A finished run of the store sent to trackers afterwards: its records, grids and summary, as they would have
    been mirrored live. Written beside the run's folder of trackers and moved in when complete; a run already sent
    to a tracker is refused rather than doubled."""
    folder = run.dir / FOLDER
    for name in names.split(","):
        if (kept := folder / (SENT[name] or run.id)).exists():
            raise UsageError(f"run {run.id} was already sent to {name} ({kept}); remove that to export it again")
    partial = run.dir / f".{FOLDER}.exporting"
    shutil.rmtree(partial, ignore_errors=True)
    trackers = Trackers(names, run, params, folder=partial)
    trackers.replay(run)
    trackers.finish(run.summary)
    folder.mkdir(exist_ok=True)
    for entry in partial.iterdir():
        entry.rename(folder / entry.name)
    partial.rmdir()
    trackers.folder = folder
    return trackers.where()
