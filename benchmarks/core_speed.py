"""Wall time of `bench --help`, `bench run --help` and each method's default `bench run` (evaluation included).

    python benchmarks/core_speed.py [--repeat 5]

Targets from the core issue: each default run <= 60 s on a 2-core machine, `bench --help` <= 1.5 s.
Figures print as a table; nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def timed(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench", *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of the help timings")
    parser.add_argument("--methods", default="di_star,di_pp,kl_rlhf")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as results:
        env = {**os.environ, "BENCH_RESULTS": results}
        # Interpreter start-up alone, as the baseline the help timings are read against.
        python = statistics.median(
            timed_python(env) for _ in range(args.repeat))
        top = statistics.median(timed(["--help"], env) for _ in range(args.repeat))
        run_help = statistics.median(timed(["run", "--help"], env) for _ in range(args.repeat))
        print(f"{'what':<28}{'seconds':>10}{'target':>10}")
        print(f"{'python -c pass (baseline)':<28}{python:>10.2f}{'':>10}")
        print(f"{'bench --help':<28}{top:>10.2f}{'1.5':>10}")
        print(f"{'bench run --help':<28}{run_help:>10.2f}{'':>10}")
        for method in args.methods.split(","):
            seconds = timed(["run", f"method={method}"], env)
            print(f"{'bench run method=' + method:<28}{seconds:>10.1f}{'60':>10}")


def timed_python(env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
