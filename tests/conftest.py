import os
import subprocess
import sys
from pathlib import Path

import pytest

# Two test workers on two cores: one thread each, here and in every `bench` subprocess, avoids
# oversubscription (it roughly halves the suite's wall time) and keeps CPU results reproducible.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))
ROOT = Path(__file__).resolve().parents[1]


def bench(*args, results=None, env=None, check=False, **kwargs):
    """Run the real `bench` command line in a subprocess, the way a user does."""
    full_env = {**os.environ, **(env or {})}
    if results is not None:
        full_env["BENCH_RESULTS"] = str(results)
    proc = subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, env=full_env,
                          cwd=kwargs.pop("cwd", ROOT), **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"bench {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture
def results(tmp_path):
    return tmp_path / "results"
