"""Sweep bookkeeping against trial compute, and the wall time of the default 12-trial analytic sweep.

    python benchmarks/sweep_overhead.py [--trials 12] [--workers 1]

"Outside the loop" is everything a trial costs beyond its training loop: the sampler's suggestion, the storage
writes, the store's run folder and index row, the heartbeat, and also building the models and the step-0
evaluation (so it is an upper bound on bookkeeping), plus one process start for the whole sweep. It is
(sweep wall time - sum of the trials' training-loop times) / trials, from one run, so noise hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench.store import Store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as results:
        env = {**os.environ, "BENCH_RESULTS": results}
        command = [sys.executable, "-m", "bench", "sweep", "method=di_star", f"n_trials={args.trials}",
                   "--workers", str(args.workers)]
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - start
        rows = Store(results).rows("WHERE study IS NOT NULL")
        train = sum(json.loads(r["summary"])["wall_s"] for r in rows if r["summary"])
        print(f"default sweep: {args.trials} trials, {args.workers} worker(s), wall {wall:.1f} s")
        outside = wall - train / args.workers
        print(f"  training loops             {train:8.1f} s  ({train / len(rows):.2f} s a trial)")
        print(f"  outside the training loop  {outside:8.1f} s  ({outside / len(rows):.2f} s a trial)")


if __name__ == "__main__":
    main()
