"""The learned world's acceptance figures, family by family: the teacher's own error, then what methods make of it.

    python benchmarks/taught_world.py [--families sd15,pixart_alpha,sdxl] [--steps 200] [--jobs 2]

For each family: `bench teach` with its defaults (the teacher's eps error against the exact eps, and its sampler's
FD to the mixture beside the same solver on the exact eps and the finite-sample floor of exact samples); then on
that teacher, through the real backend,
  - DI++ with alpha_rew 0 from the denoiser start (DMD2's): FD to the mixture at the start and the end;
  - KL-RLHF with the latent linear reward at alpha_rew 20: reward at the start, the end and p*'s, FD to p*.
The criteria (issue: a learned world): FD within twice the floor; DI++ at least halves its FD; KL-RLHF's reward
within 10% of the start-to-p* gap and its FD to p* down by at least 60%. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch


def train_on(folder: Path, family: str, method: str, alpha: float, steps: int) -> tuple[dict, dict, dict | None]:
    """Metrics of the EMA generator before and after `steps` updates, and p*'s."""
    from bench.config import build_config
    from bench.train.trainer import Trainer

    cfg = build_config([f"backend={family}", f"backend.model={folder}", "reward=linear", f"method={method}",
                        f"method.alpha_rew={alpha}", "train.batch_size=32", "threads=1"])
    trainer = Trainer(cfg, None, progress=False)

    def measured() -> dict:
        with trainer.ema.applied(trainer.unwrapped(trainer.generator)) as generator:
            return trainer.backend.evaluate(generator, 512, 0)[0]

    start = measured()
    for _ in range(steps):
        trainer.step_once()
    return start, measured(), trainer.backend.describe_optimum(512, 0)


def change(start: float, end: float) -> str:
    fall = 1 - end / start
    return f"{fall:.0%} down" if fall >= 0 else f"{-fall:.0%} up"


def family_row(family: str, steps: int) -> str:
    import json

    from bench.teach import TeachConfig, teach

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        began = time.perf_counter()
        folder = teach(TeachConfig(family=family, out=str(Path(root) / family)), progress=False)
        taught_in = time.perf_counter() - began
        report = json.loads((folder / "teacher.json").read_text())
        error = max(row["conditional"] for row in report["eps_error"].values())
        sampler = report["sampler"]
        di_start, di_end, _ = train_on(folder, family, "di_pp", 0.0, steps)
        kl_start, kl_end, optimum = train_on(folder, family, "kl_rlhf", 20.0, steps)
    gap = optimum["reward"] - kl_start["reward"]
    return (f"| {family} | {taught_in:.0f} s | {error:.4f} | {sampler['fd']:.3f} / {sampler['fd_exact_eps']:.3f} / "
            f"{sampler['fd_exact_samples']:.3f} ({sampler['fd'] / sampler['fd_exact_samples']:.1f}x floor) | "
            f"{sampler['coverage']:.2f} | {di_start['fd_ref']:.2f} -> {di_end['fd_ref']:.2f} "
            f"({change(di_start['fd_ref'], di_end['fd_ref'])}) | "
            f"{kl_start['reward']:.3f} -> {kl_end['reward']:.3f}, p* {optimum['reward']:.3f} "
            f"({abs(optimum['reward'] - kl_end['reward']) / abs(gap):.0%} of the gap left) | "
            f"{kl_start['fd_star']:.2f} -> {kl_end['fd_star']:.2f} "
            f"({change(kl_start['fd_star'], kl_end['fd_star'])}) |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", default="sd15,pixart_alpha,sdxl")
    parser.add_argument("--steps", type=int, default=200, help="training steps of each method on a teacher")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    families = args.families.split(",")
    print("| family | taught in | teacher's largest eps error | sampler FD: teacher / exact eps / exact samples | "
          f"coverage | DI++ alpha 0, FD to the mixture ({args.steps} steps) | KL-RLHF alpha 20: reward | "
          "KL-RLHF: FD to p* |")
    print("|---|---|---|---|---|---|---|---|")
    with ProcessPoolExecutor(args.jobs) as pool:
        for row in pool.map(family_row, families, [args.steps] * len(families)):
            print(row, flush=True)


if __name__ == "__main__":
    main()
