import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Two test workers on two cores: one thread each, here and in every `bench` subprocess, avoids
# oversubscription (it roughly halves the suite's wall time) and keeps CPU results reproducible.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
# Tests never reach a hub: a hub id resolves from the (empty) cache or fails at once.
os.environ["HF_HUB_OFFLINE"] = "1"

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))
ROOT = Path(__file__).resolve().parents[1]


def bench_env(results=None, env=None) -> dict:
    full_env = {**os.environ, **(env or {})}
    if results is not None:
        full_env["BENCH_RESULTS"] = str(results)
    return full_env


def bench(*args, results=None, env=None, check=False, **kwargs):
    """Run the real `bench` command line in a subprocess, the way a user does."""
    proc = subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          env=bench_env(results, env), cwd=kwargs.pop("cwd", ROOT), **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"bench {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def bench_process(*args, results=None, env=None) -> subprocess.Popen:
    """Start `bench` in the background, for tests that interrupt it."""
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=ROOT, env=bench_env(results, env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def launched(processes: int, *args: str) -> list[str]:
    """The command line of `bench ARGS` under `accelerate launch` with `processes` CPU processes (gloo), on a free
    port so that parallel tests do not meet."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = ["--multi_gpu", "--num_processes", str(processes)] if processes > 1 else ["--cpu"]
    return [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), "-m", "bench", *args]


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and every process it started, and wait for them all: torch's launcher starts each worker
    in a session of its own, out of reach of a signal to the launcher's group."""
    import psutil

    launcher = psutil.Process(proc.pid)
    every = [launcher, *launcher.children(recursive=True)]
    for process in every:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(every, timeout=60)
    proc.wait()


def wait_until(condition, *, proc=None, timeout=120.0, interval=0.02):
    """Poll `condition()` until it returns something truthy, which is returned. Fails if `proc` ends first
    (the moment a test wanted to interrupt has passed) or when the time is up."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (code {proc.returncode}) before the awaited moment")
        time.sleep(interval)
    raise AssertionError(f"nothing happened within {timeout} s")


@pytest.fixture
def results(tmp_path):
    return tmp_path / "results"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    """Tiny random SD1.5, PixArt-alpha, SDXL and SD3 pipelines and tiny scorer weights, saved to disk once per
    worker."""
    from random_weights import write_weights
    from tiny_pipelines import tiny_pixart, tiny_sd3, tiny_sd15, tiny_sdxl

    root = tmp_path_factory.mktemp("models")
    weights = root / "weights"
    write_weights(weights)
    return {"sd15": tiny_sd15(root), "pixart_alpha": tiny_pixart(root), "sdxl": tiny_sdxl(root), "sd3": tiny_sd3(root),
            "weights": weights}


def backend_args(tiny_models: dict, backend: str) -> list[str]:
    """Overrides that point a backend at the tiny models (none for the analytic world)."""
    if backend == "analytic":
        return ["backend.hidden=32"]
    return [f"backend={backend}", f"backend.model={tiny_models[backend]}", "reward=hpsv2",
            f"weights={tiny_models['weights']}", "train.batch_size=2", "eval.samples=16", "backend.eval_prompts=2"]


def without(args: list[str], key: str) -> list[str]:
    return [a for a in args if a.partition("=")[0] != key]


@pytest.fixture
def hub_unreachable(monkeypatch):
    """The hub as it is here and in CI: nothing cached, nothing downloadable. Tests never ask the real one."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    def not_cached(repo, *args, **kwargs):
        raise LocalEntryNotFoundError(f"{repo} is not cached and the hub is offline")

    monkeypatch.setattr("huggingface_hub.snapshot_download", not_cached)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", not_cached)
