"""Time to first render of the leaderboard on a synthetic 500-run store, cold and with a warm cache.

    python benchmarks/dashboard_render.py [--runs 500]

The store is one real smoke run cloned into --runs folders with varied methods, reward weights and seeds (a
fixture for timing the app, not results), then indexed. The app is rendered with streamlit.testing's AppTest,
which runs the same script the server runs; a one-run store is timed in the same process as the baseline,
after one untimed render that pays the imports. "First render" has an empty data cache.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml
from streamlit.testing.v1 import AppTest

from bench.cli import main as bench
from bench.store import Store
from dashboard.data import load_runs

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")


def build_store(root: Path, runs: int) -> None:
    assert bench(["run", "preset=smoke", f"results.dir={root}"]) == 0
    store = Store(root)
    source = store.get(store.rows()[0]["id"]).dir
    settings = itertools.product(["di_star", "di_pp", "kl_rlhf"], [0.1, 0.3, 1.0, 3.0, 10.0], range(1000))
    for i, (method, alpha, seed) in zip(range(runs - 1), settings, strict=False):
        target = root / "runs" / f"{source.name}-{i:04d}"
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints"))
        config = yaml.safe_load((target / "config.yaml").read_text())
        config["method"].update(name=method, alpha_rew=alpha)
        config["seed"] = seed
        (target / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (target / "run.json").write_text((target / "run.json").read_text().replace(source.name, target.name))
    store.reindex()


def render(root: Path) -> tuple[float, float]:
    os.environ["BENCH_RESULTS"] = str(root)
    start = time.perf_counter()
    at = AppTest.from_file(APP, default_timeout=300).run()
    cold = time.perf_counter() - start
    assert not at.exception, at.exception
    start = time.perf_counter()
    at.run()
    return cold, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as small, tempfile.TemporaryDirectory() as large:
        build_store(Path(small), 1)
        build_store(Path(large), args.runs)
        render(Path(small))  # imports (pandas, altair, optuna) happen once per process: keep them out of both
        load_runs.clear()
        base_cold, base_warm = render(Path(small))
        cold, warm = render(Path(large))
        print(f"{'store':<12}{'first render':>14}{'rerun (cached)':>16}")
        print(f"{'1 run':<12}{base_cold:>13.2f}s{base_warm:>15.2f}s")
        print(f"{f'{args.runs} runs':<12}{cold:>13.2f}s{warm:>15.2f}s")


if __name__ == "__main__":
    main()
