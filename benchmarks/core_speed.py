"""Wall time of `bench --help`, `bench run --help` and each method's default `bench run` (evaluation included).

    python benchmarks/core_speed.py [--repeat 5] [--baseline REV]
    python benchmarks/core_speed.py --parts       # milliseconds of the pieces of a KL-RLHF step, one thread

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
    parser.add_argument("--parts", action="store_true", help="time the pieces of a default KL-RLHF step instead")
    args = parser.parse_args()
    if args.parts:
        return parts()
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


def parts() -> None:
    """Milliseconds of what a default KL-RLHF step is made of (batch 128, one thread, this checkout only)."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from bench.diffusion import dsm_loss, noised, probability_flow

    from world_checks import trainer_for

    torch.set_num_threads(1)
    trainer = trainer_for(["method=kl_rlhf"])
    generator, fake = trainer.unwrapped(trainer.generator), trainer.unwrapped(trainer.fake)
    d = trainer.draw(0)
    with torch.no_grad():
        x0 = generator(d["z"], d["cond"])
    alpha, sigma, x_t = noised(trainer.schedule, x0, d["t"], d["eps"])

    def forward_backward():
        fake.zero_grad()
        dsm_loss(fake(x_t, d["t"], alpha, sigma, d["cond"]), d["eps"]).mean().backward()

    forward_backward()
    params = [p for p in fake.parameters() if p.requires_grad]
    loop, fused = (torch.optim.Adam(params, lr=1e-9, fused=f) for f in (False, True))
    reference, schedule = trainer.backend.reference, trainer.backend.schedule
    pieces = {
        "generator sample (ODE start + residual)": lambda: generator(d["z"], d["cond"]),
        "ODE start alone (12 solver steps)": lambda: probability_flow(reference.denoiser(d["cond"]), d["z"],
                                                                        schedule, 12),
        "fake score forward + backward": forward_backward,
        "Adam step, per-tensor loop": loop.step,
        "Adam step, fused": fused.step,
        "fake-score update (all of it)": trainer.fake_update,
        "generator update (all of it)": trainer.generator_update,
    }
    for label, piece in pieces.items():
        with torch.no_grad() if "sample" in label or "ODE" in label else contextlib.nullcontext():
            piece()
            start, count = time.perf_counter(), 200
            for _ in range(count):
                piece()
        print(f"{label:<44}{(time.perf_counter() - start) / count * 1e3:>8.2f} ms", flush=True)


def timed_python(env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
