"""Two runs side by side against one alone, with the suite's thread sizing and with torch's default (every core).

    python benchmarks/side_by_side.py [--steps 600] [extra bench run keys ...]

Goal: two side by side within 1.5 times the wall time of one alone. torch's default gives every process every
core, so on a 2-core machine two runs fight over four threads; the baseline row measures that in the same run
(these machines are noisy: compare rows of one invocation, not across invocations).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def run_together(count: int, args: list[str], threads: str) -> float:
    """Wall time of `count` `bench run` processes started together; threads= '' for the suite's sizing."""
    env = {**os.environ, "BENCH_REPORT_SECONDS": "0"}
    env.pop("OMP_NUM_THREADS", None)
    extra = [f"threads={threads}"] if threads else []
    with tempfile.TemporaryDirectory() as results:
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "bench", "run", *args, *extra, f"seed={i}",
                                   f"results.dir={results}", "eval.grid=false"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for i in range(count)]
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode:
                raise SystemExit(f"bench run failed: {err}")
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    known, rest = parser.parse_known_args()
    args = ["method=di_star", f"train.steps={known.steps}", *rest]
    cores = os.cpu_count() or 1
    print(f"{cores} cores; bench run {' '.join(args)}")
    print(f"{'threads':<28}{'one alone (s)':>15}{'two together (s)':>18}{'ratio':>8}")
    for label, threads in (("suite's sizing (threads=0)", ""), (f"torch default ({cores} each)", str(cores))):
        alone, together = run_together(1, args, threads), run_together(2, args, threads)
        print(f"{label:<28}{alone:>15.1f}{together:>18.1f}{together / alone:>8.2f}")


if __name__ == "__main__":
    main()
