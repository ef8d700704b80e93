"""Time to first render of each dashboard page on synthetic 500- and 5,000-run stores, cold and with a warm cache.

    python benchmarks/dashboard_render.py [--runs 500 5000]

Goals: the leaderboard's first render within 2 s at 500 runs and 5 s at 5,000.

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


PAGES = ("leaderboard", "frontier", "run", "compare", "sweeps")


def render(root: Path, page: str = "leaderboard") -> tuple[float, float]:
    os.environ["BENCH_RESULTS"] = str(root)
    load_runs.clear()
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["page"] = page
    if page == "compare":
        at.query_params["runs"] = ",".join(r["id"] for r in Store(root).rows()[:2])
    start = time.perf_counter()
    at.run()
    cold = time.perf_counter() - start
    assert not at.exception, at.exception
    start = time.perf_counter()
    at.run()
    return cold, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, nargs="+", default=[500, 5000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        stores = {}
        for size in (1, *args.runs):
            stores[size] = Path(folder) / str(size)
            build_store(stores[size], size)
        for page in PAGES:  # imports (pandas, altair, optuna) happen once per process: keep them out of the times
            render(stores[1], page)
        print(f"{'page':<13}{'store':>12}{'first render':>14}{'rerun (cached)':>16}")
        for page in PAGES:
            for size, root in stores.items():
                cold, warm = render(root, page)
                print(f"{page:<13}{f'{size} runs':>12}{cold:>13.2f}s{warm:>15.2f}s", flush=True)


if __name__ == "__main__":
    main()
