"""The reward-divergence frontier of the README: a sweep a method, the table of gaps to the bound, the figure.

    python benchmarks/frontier.py [--results DIR] [--screenshot docs/frontier.png]

Runs `bench sweep method=M space=frontier` for every method on the README's world (6 x 6 pictures, 4
captions), two sweeps at a time with one thread each; a study already in DIR resumes. Then prints, for each
alpha_rew and method, the run's exact KL to the reference, its mean reward and its reward gap to the bound at the same
KL (the closed-form optimum's curve, interpolated linearly: which slightly flatters the bound). With --screenshot,
serves the dashboard on the store and saves its Frontier page as a PNG (needs Chromium).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.store import Store

ROOT = Path(__file__).resolve().parent.parent
# KL-RLHF and DIDR side by side: their optimum is the bound itself.
METHODS = {"kl_rlhf": "KL-RLHF", "didr": "DIDR", "di_pp": "DI++", "di_star": "DI\\*", "dmd": "DMD"}
WORLD = ["backend.image_size=6", "backend.prompts=4", "threads=1"]


def sweep(method: str, results: Path) -> None:
    subprocess.run([sys.executable, "-m", "bench", "sweep", f"method={method}", "space=frontier", *WORLD,
                    f"results.dir={results}"], check=True, stdout=subprocess.DEVNULL)


def table(results: Path) -> str:
    rows: dict[float, dict[str, str]] = {}
    for row in Store(results).rows():
        if row["status"] != "finished" or not row["study"] or "frontier" not in row["study"]:
            continue
        summary = json.loads(row["summary"])
        alpha = Store(results).get(row["id"]).config["method"]["alpha_rew"]
        kl, reward = summary["metrics"]["kl_ref"], summary["metrics"]["reward"]
        curve = summary["optimum"]["curve"]
        bound = np.interp(kl, [p["kl_ref"] for p in curve], [p["reward"] for p in curve])
        rows.setdefault(alpha, {})[row["method"]] = f"{kl:.2f}, {reward:.2f}, {reward - bound:+.2f}"
    lines = ["| alpha_rew | " + " | ".join(f"{name}: KL, reward, gap" for name in METHODS.values()) + " |",
             "|---|" + "---|" * len(METHODS)]
    for alpha in sorted(rows):
        lines.append(f"| {alpha:g} | " + " | ".join(rows[alpha].get(m, "-") for m in METHODS) + " |")
    return "\n".join(lines)


def screenshot(results: Path, out: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from browser import chromium_session

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "bench", "dashboard", "--results", str(results), "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        # Chromium may still be writing its profile as it exits: a leftover file must not fail the benchmark.
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile, \
                chromium_session("/usr/bin/chromium", profile) as visit:
            page = visit(f"http://127.0.0.1:{port}/?page=frontier", ["Reward-divergence frontier"], 1)
            out.write_bytes(page.png)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=Path, default=None, help="store for the sweeps (default: a new folder)")
    parser.add_argument("--screenshot", type=Path, default=None, help="save the Frontier page here (PNG)")
    args = parser.parse_args()
    results = args.results or Path(tempfile.mkdtemp(prefix="frontier-"))
    began = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        # DMD's sweep is the longest (five fake updates a step): it starts first, so the pool ends together.
        list(pool.map(sweep, sorted(METHODS, key=lambda method: method != "dmd"), [results] * len(METHODS)))
    print(f"store: {results} ({time.perf_counter() - began:.0f} s)\n")
    print(table(results))
    if args.screenshot:
        screenshot(results, args.screenshot)
        print(f"\nfigure: {args.screenshot}")


if __name__ == "__main__":
    main()
