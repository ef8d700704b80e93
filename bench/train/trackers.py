"""Experiment trackers: a run's records mirrored, as they are written, to the tracker a researcher already reads.

The store's `metrics.jsonl` stays the record; a tracker gets a copy of every training and evaluation record at its
step (`train/<key>`, `eval/<key>`), the resolved configuration, the sample grids as images and the final summary,
under the store's run id as the tracker's run name. They go through accelerate's tracker classes, which the
relatives use. TensorBoard is the one wired so far (it writes event files under the run's folder, offline by
nature); W&B, MLflow and trackio are named so that asking for them says so in one line instead of failing later.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from bench.errors import UsageError

SUPPORTED = {"tensorboard": ("tensorboard", "tensorboardX")}  # tracker -> the packages that can serve it
NOT_YET = ("wandb", "mlflow", "trackio")
FOLDER = "trackers"  # under the run's folder


def parse_trackers(text: str) -> str:
    """`tracker=` as given (one name or a comma-separated list), checked and in canonical order."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name in NOT_YET:
            raise UsageError(f"tracker={name} is not wired yet; tracker=tensorboard is (its logs go under the run's "
                             f"folder), and every record is in the run's metrics.jsonl")
        if name not in SUPPORTED:
            raise UsageError(f"unknown tracker '{name}'; choose from: {', '.join(SUPPORTED)} (or leave tracker unset)")
    return ",".join(sorted(set(names)))


def check_installed(names: str) -> None:
    """A tracker whose package is missing is refused before any training, with the command that installs it."""
    for name in filter(None, names.split(",")):
        if not any(importlib.util.find_spec(package) for package in SUPPORTED[name]):
            raise UsageError(f"tracker={name} needs the {SUPPORTED[name][0]} package, which is not installed: "
                             f"pip install -e \".[trackers]\" (or pip install {SUPPORTED[name][0]})")


def flat(config: dict, prefix: str = "") -> dict:
    """A nested configuration as `section.key` scalars, which every tracker's hyperparameter table accepts."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return out


class Trackers:
    """The run's trackers, open for its lifetime on the main process. A resumed run writes into the same folders
    under the same run name, so the tracker shows one run."""

    def __init__(self, names: str, run_id: str, folder: Path, config: dict):
        from accelerate.tracking import TensorBoardTracker

        check_installed(names)
        self.folder = folder
        self.active = [TensorBoardTracker(run_id, str(self.folder)) for name in names.split(",") if
                       name == "tensorboard"]
        for tracker in self.active:
            tracker.start()
            tracker.store_init_configuration(flat(config))

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
            tracker.log_images({"samples": image[None]}, step=step, dataformats="NHWC")

    def finish(self, summary: dict | None) -> None:
        """Close the trackers, with the final summary's metrics where the run has one."""
        if summary:
            self.log({"kind": "summary", "step": summary.get("steps", 0), **summary.get("metrics", {})})
        for tracker in self.active:
            tracker.finish()


def where(folder: Path) -> str:
    return f"tracker logs: {folder} (tensorboard --logdir {folder})"


def export(run, names: str) -> Path:
    """A finished run of the store sent to a tracker afterwards: its records, grids and summary, as they would have
    been mirrored live. Written beside the run's folder of trackers and swapped in whole; a run already there is
    refused rather than doubled."""
    import shutil

    folder = run.dir / FOLDER
    if (folder / run.id).exists():
        raise UsageError(f"run {run.id} already has tracker logs in {folder / run.id}; remove that folder to export "
                         "it again")
    partial = run.dir / f".{FOLDER}.exporting"
    shutil.rmtree(partial, ignore_errors=True)
    trackers = Trackers(names, run.id, partial, run.config)
    grids = {int(path.stem.split("_")[1]): path for path in (run.dir / "samples").glob("step_*.png")}
    for record in run.records():
        trackers.log(record)
        if record["kind"] == "eval" and record["step"] in grids:
            trackers.log_grid(grids[record["step"]], record["step"])
    trackers.finish(run.summary)
    folder.mkdir(exist_ok=True)
    (partial / run.id).rename(folder / run.id)
    shutil.rmtree(partial)
    return folder
