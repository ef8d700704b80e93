"""What a checkpoint folder holds, and reading it without unpickling anything.

    checkpoints/latest/  model.safetensors      the generator (accelerate's save_state: every rank takes part)
                         model_1.safetensors    the fake score
                         optimizer.bin, optimizer_1.bin    Adam states (read with torch.load(weights_only=True))
                         ema.safetensors        the EMA of the generator's trainable weights
                         optimizer_shards/      with train.parallel=fsdp, instead of optimizer*.bin: each
                                                process's shards of the optimiser states (torch.distributed.checkpoint)
                         progress.json          step, wall time and processes; written last: it marks a whole checkpoint

accelerate's own pickles (objects registered for checkpointing are read back with full pickle; its RNG states
are pickles too) are not used: randomness is drawn per step from (seed, step), so there is no RNG state to keep,
and a run folder copied from elsewhere cannot run code when it is resumed, initialised from or evaluated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bench.errors import UsageError
from bench.store import Run
from bench.store.files import atomic_write_json, fsync_folder

GENERATOR_FILE, FAKE_FILE, EMA_FILE, PROGRESS_FILE = (
    "model.safetensors", "model_1.safetensors", "ema.safetensors", "progress.json")


def write_extras(folder: Path, ema: dict[str, torch.Tensor], step: int, wall: float, processes: int) -> None:
    """Our part of a checkpoint folder whose networks and optimisers have just been written; then every file is on
    disk."""
    for pickled in folder.glob("*.pkl"):
        pickled.unlink()
    save_weights(ema, folder / EMA_FILE)
    atomic_write_json(folder / PROGRESS_FILE, {"step": step, "wall": wall, "processes": processes})
    for file in folder.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_folder(folder)


def save_weights(state: dict[str, torch.Tensor], file: Path) -> None:
    save_file({name: value.detach().cpu().contiguous() for name, value in state.items()}, file)


def check_processes(folder: Path, processes: int) -> None:
    """A sharded checkpoint resumes only under the number of processes that wrote its shards."""
    saved = progress(folder).get("processes")
    if saved != processes:
        raise UsageError(f"checkpoint {folder} holds optimiser states sharded over {saved} processes, and this launch "
                         f"has {processes}; resume with accelerate launch --num_processes {saved}")


def last_checkpoint(run: Run) -> Path | None:
    """The newest complete checkpoint; the previous one if a crash came in the middle of swapping them."""
    folder = run.checkpoint_dir
    for candidate in (folder, folder.with_name(f".{folder.name}.old")):
        if (candidate / PROGRESS_FILE).exists():
            return candidate
    return None


def check_contents(folder: Path) -> None:
    """Refuse a checkpoint holding pickles this suite never writes (a folder from elsewhere), without reading them."""
    foreign = sorted(p.name for p in folder.glob("*.pkl"))
    if foreign:
        raise UsageError(f"checkpoint {folder} holds {', '.join(foreign)}, which this suite never writes and will not "
                         "unpickle; remove them to resume from it")


def progress(folder: Path) -> dict:
    return json.loads((folder / PROGRESS_FILE).read_text())


def weights(folder: Path, name: str) -> dict[str, torch.Tensor]:
    """One of the checkpoint's weight files (GENERATOR_FILE, FAKE_FILE, EMA_FILE), read without unpickling."""
    return load_file(folder / name)


def load_ema_generator(run: Run, generator: torch.nn.Module) -> int:
    """Load a run's checkpointed generator with its EMA weights into `generator`; returns the step."""
    folder = checkpoint_of(run, "to evaluate")
    load_into(generator, folder / GENERATOR_FILE, run)
    with torch.no_grad():
        for name, value in weights(folder, EMA_FILE).items():
            generator.get_parameter(name).copy_(value)
    return int(progress(folder)["step"])


def load_start(run: Run, generator: torch.nn.Module, fake: torch.nn.Module) -> int:
    """Start a new run from a finished one: its EMA generator (what its evaluations measured) and its fake score,
    which already knows that generator. Returns the step the start was taken at."""
    step = load_ema_generator(run, generator)
    load_into(fake, checkpoint_of(run, "to start from") / FAKE_FILE, run)
    return step


def checkpoint_of(run: Run, purpose: str) -> Path:
    folder = last_checkpoint(run)
    if folder is None:
        raise UsageError(f"run {run.id} has no checkpoint {purpose} (looked in {run.checkpoint_dir})")
    return folder


def load_into(module: torch.nn.Module, file: Path, run: Run) -> None:
    try:
        module.load_state_dict(load_file(file))
    except RuntimeError as err:  # a mismatch of names or shapes: another architecture
        raise UsageError(f"run {run.id}'s {file.name} does not fit this network ({str(err).splitlines()[0]}); "
                         "start from a run with the same backend settings") from None
