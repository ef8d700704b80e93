"""Wall time of `bench --help`, `bench run --help` and each method's default `bench run` (evaluation included).

    python benchmarks/core_speed.py [--repeat 5] [--baseline REV]

Targets from the core issues: each default run <= 25 s on a quiet 2-core machine, `bench --help` <= 1.5 s. With
--baseline, the same commands also run from a git worktree of REV (a commit before a change), interleaved with
this checkout's, so both columns come from one run on one machine in the same state. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(args: list[str], env: dict, cwd: Path) -> float:
    """Seconds of `python -m bench ARGS` run from `cwd`, whose packages come first on the import path."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench", *args], env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


@contextlib.contextmanager
def worktree(rev: str):
    with tempfile.TemporaryDirectory() as parent:
        folder = Path(parent) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), rev], check=True,
                       capture_output=True)
        try:
            yield folder
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of the help timings")
    parser.add_argument("--methods", default="di_star,di_pp,kl_rlhf")
    parser.add_argument("--baseline", default="", help="a git revision to time beside this checkout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as results, \
            (worktree(args.baseline) if args.baseline else contextlib.nullcontext()) as before:
        env = {**os.environ, "BENCH_RESULTS": results}
        trees = {"now": ROOT, **({f"at {args.baseline}": before} if before else {})}

        def row(label: str, command: list[str], repeat: int, target: str = "") -> None:
            # Each repetition times every tree in turn, so a slow spell of the machine hits both columns alike.
            times = [[timed(command, env, tree) for tree in trees.values()] for _ in range(repeat)]
            seconds = [statistics.median(column) for column in zip(*times, strict=True)]
            print(f"{label:<28}" + "".join(f"{s:>14.2f}" for s in seconds) + f"{target:>10}", flush=True)

        print(f"{'what':<28}" + "".join(f"{name:>14}" for name in trees) + f"{'target':>10}")
        python = statistics.median(timed_python(env) for _ in range(args.repeat))
        print(f"{'python -c pass (start-up)':<28}{python:>14.2f}")
        row("bench --help", ["--help"], args.repeat, "1.5")
        row("bench run --help", ["run", "--help"], args.repeat)
        for method in args.methods.split(","):
            row(f"bench run method={method}", ["run", f"method={method}"], 1, "25")


def timed_python(env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
