"""train.parallel=fsdp on two CPU processes (gloo): the steps data parallelism takes, a sharded optimiser state that
resumes exactly, an export of the whole generator, less memory a process, and the faults of a resume."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from bench.store import Store

from conftest import ROOT, backend_args, bench, bench_env, kill_tree, launched, wait_until, without

FILES = ("model.safetensors", "model_1.safetensors", "ema.safetensors")  # generator, fake score, EMA


def train(tiny_models, results, parallel: str, extra=(), backend: str = "sd15", processes: int = 2,
          background: bool = False):
    """`bench run` on a tiny pipeline, under a launch of `processes` (or alone); its summary and run (or the
    process)."""
    args = ["run", *without(backend_args(tiny_models, backend), "train.batch_size"), "train.batch_size=4",
            f"train.parallel={parallel}", *extra]
    command = launched(processes, *args) if processes > 1 else [sys.executable, "-m", "bench", *args]
    if background:
        return subprocess.Popen(command, cwd=ROOT, env=bench_env(results), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=bench_env(results), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = Store(results).rows()
    return json.loads(row["summary"]), Store(results).get(row["id"])


def assert_same_weights(a, b, files=FILES, **tolerance):
    for name in files:
        first, second = load_file(a / name), load_file(b / name)
        assert first.keys() == second.keys(), name
        for key in first:
            torch.testing.assert_close(first[key], second[key], msg=lambda m, n=name, k=key: f"{n}: {k}: {m}",
                                       **tolerance)


@pytest.mark.parametrize("backend", ["sd15", "sdxl"])
def test_fsdp_takes_the_steps_data_parallelism_takes_with_less_memory_a_process(tiny_models, tmp_path, backend):
    """Against one process, which holds what each data-parallel replica holds and takes the same steps (tested with
    two processes in test_pretrained)."""
    extra = ("train.steps=3", "eval.grid=false")
    sharded, run_sharded = train(tiny_models, tmp_path / "fsdp", "fsdp", extra, backend)
    replicated, run_replicated = train(tiny_models, tmp_path / "one", "ddp", extra, backend, processes=1)
    assert sharded["distributed"]["strategy"] == "FSDP" and sharded["distributed"]["processes"] == 2
    # Weights, fake score and EMA after three steps: the same within float32 summation order (Adam's steps are 1e-3:
    # the tolerance is 1% of one; the data-parallel test allows the same).
    assert_same_weights(run_sharded.checkpoint_dir, run_replicated.checkpoint_dir, rtol=1e-4, atol=1e-5)
    assert (run_sharded.checkpoint_dir / "optimizer_shards").is_dir()  # each process's optimiser shards
    assert not list(run_sharded.checkpoint_dir.glob("optimizer*.bin"))
    # The export holds the whole generator, gathered from the shards.
    exported = load_file(run_sharded.dir / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    reference = load_file(run_replicated.dir / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    for key in reference:
        torch.testing.assert_close(exported[key], reference[key], rtol=1e-4, atol=1e-5)
    # Trained weights, gradients, Adam states and EMA: each process holds half of what a replica holds.
    ratio = (sharded["distributed"]["trained_state_bytes_per_process"]
             / replicated["distributed"]["trained_state_bytes_per_process"])
    assert 0.45 < ratio < 0.56, ratio
    assert sharded["metrics"]["reward"] == pytest.approx(replicated["metrics"]["reward"], rel=1e-4)


def test_a_killed_fsdp_run_resumes_exactly_and_only_under_its_own_number_of_processes(tiny_models, tmp_path):
    extra = ("train.steps=24", "train.ckpt_every=8", "train.eval_every=0", "eval.grid=false")
    results = tmp_path / "killed"
    proc = train(tiny_models, results, "fsdp", extra, background=True)

    def saved_step():
        found = list((results / "runs").glob("*/checkpoints/latest/progress.json")) if (results / "runs").exists() \
            else []
        return found and 8 <= json.loads(found[0].read_text())["step"] < 24

    wait_until(saved_step, proc=proc, timeout=300)
    kill_tree(proc)  # the launcher and both processes
    (run_dir,) = (results / "runs").iterdir()
    wait_until(lambda: not Store(results).get(run_dir.name).has_writer())  # the killed processes are gone
    checkpoint = run_dir / "checkpoints" / "latest"
    before = {path: path.read_bytes() for path in checkpoint.rglob("*") if path.is_file()}
    assert any(path.suffix == ".distcp" for path in before)

    alone = bench("run", "resume=latest", results=results)  # one process: the shards are for two
    assert alone.returncode == 2 and "Traceback" not in alone.stderr
    assert "holds optimiser states sharded over 2 processes, and this launch has 1; resume with accelerate " \
           "launch --num_processes 2" in alone.stderr
    assert {path: path.read_bytes() for path in checkpoint.rglob("*") if path.is_file()} == before  # untouched

    resumed = subprocess.run(launched(2, "run", "resume=latest"), capture_output=True, text=True, cwd=ROOT,
                             env=bench_env(results), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, whole = train(tiny_models, tmp_path / "whole", "fsdp", extra)
    assert_same_weights(checkpoint, whole.checkpoint_dir, rtol=0, atol=0)  # the same run, bit for bit


@pytest.mark.parametrize("backend, message", [
    ("sd15", "train.parallel=fsdp shards the trained networks over the processes of a launch, and this is one "
             "process: start it with accelerate launch --num_processes N"),
    ("analytic", "train.parallel=fsdp is for the diffusers backends; backend=analytic's networks are small enough to "
                 "hold whole"),
])
def test_fsdp_where_it_cannot_serve_is_one_line_before_anything_is_written(tiny_models, results, backend, message):
    proc = bench("run", *backend_args(tiny_models, backend), "train.parallel=fsdp", "train.steps=2", results=results)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr.splitlines()[-1] and not (results / "runs").exists()  # one line, last


def test_the_optimiser_shards_index_is_read_without_running_code(tmp_path):
    """torch reads its checkpoint index with plain pickle; ours reads torch's own records and nothing else."""
    import io
    import pickle

    from torch.distributed.checkpoint.metadata import Metadata, TensorProperties, TensorStorageMetadata

    from bench.errors import UsageError
    from bench.train.sharding import RecordsOnly

    index = Metadata({"generator.state.w.exp_avg": TensorStorageMetadata(TensorProperties(torch.float32),
                                                                         torch.Size([4]), [])})
    assert RecordsOnly(io.BytesIO(pickle.dumps(index))).load() == index
    with pytest.raises(UsageError, match=r"holds posix\.system, which this suite never writes and will not unpickle"):
        RecordsOnly(io.BytesIO(pickle.dumps(os.system))).load()
