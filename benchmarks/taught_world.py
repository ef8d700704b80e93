"""The learned world's acceptance figures, family by family: the teacher's own error, then what methods make of it.

    python benchmarks/taught_world.py [--families sd15,pixart_alpha,sdxl,sd3] [--steps 300] [--jobs 2]
    python benchmarks/taught_world.py --committed --batch 16 --families sd15,pixart_alpha,sdxl   # the tests' runs
    python benchmarks/taught_world.py --guidance [--family sdxl] [--steps 800]
    python benchmarks/taught_world.py --overshoot [--family sd15] [--s0 0.1] [--jobs 2]
    python benchmarks/taught_world.py --reproduce [--families ...] [--write]

For each family: `bench teach` with its defaults (the time, whether every byte is the committed teacher's in
tests/teachers, the teacher's eps error against the exact eps, and its sampler's FD to the mixture beside the same
solver on the exact eps and the finite-sample floor of exact samples); then on that teacher, through the real
backend,
  - DI++ with alpha_rew 0 from the denoiser start (DMD2's): FD to the mixture at the start and the end (on
    PixArt at generator rate 0.01: DI_PP_RATE);
  - KL-RLHF with the latent linear reward at alpha_rew 20: reward at the start, the end and p*'s, FD to p*, and
    at the end how much of the generator's move its teacher sees at KL-RLHF's time (shift_seen).
With --committed the rows train on the committed teachers instead of teaching (the tests' teachers; with --batch 16
these are the tests' runs).
Both FDs are read on two samples a latent value for each caption (world_checks.taught_samples: 128 a caption, SD3's
512), whose floor (the FD of as many exact samples, about 0.6; SD3's 2.2) is printed
beside them, and their falls are measured above it. The criteria (issue: a learned world): the sampler's FD within
twice its floor; DI++ at least halves its FD; KL-RLHF's reward within 10% of the start-to-p* gap and its FD to p*
down by at least 60%.

With --guidance: the guidance criterion (guidance moves the generator the way and by the amount the closed form gives
on two overlapping captions). The family is taught a world of two captions of one Gaussian each (s0 1, means 3.47
apart over 64 latent values), and KL-RLHF with nothing to gain at the single time t 0.2 trains under guidance scales
1, 3 and 0.5; its caption-0 samples' mean along the line to the other caption is printed beside the closed form (the
one tests/test_cfg.py holds the analytic backend to), with their spread (the reference's: 1), and at the end a check
of the fake score against a Gaussian fitted to the generator's samples (fake_check). Four fake updates a step at
lr_fake 1e-3: with one at 1e-4 (three times quicker) the fake's error held scale 3 at -0.19 against the closed
form's -0.27 from step 400 to 800 on SDXL's teacher; with four it swings about it (-0.31 at step 400, -0.23 at 800).

With --overshoot: where KL-RLHF's reward overshoot came from on the family's teacher of a world of s0 0.1 (`bench
teach`'s default before 0.25; --s0 sets another). The gradient of the reward carried through the teacher's
denoiser at t 0.02 (what KL-RLHF's reward term differentiates) against the same through the world's exact
posterior mean, and KL-RLHF at alpha_rew 20 under changes to the rates and the fake updates, its reward every 100
steps beside p*'s. Nothing here is a test.

With --reproduce: `bench teach family=F` with its defaults for each of --families, compared file by file with the
teacher the tests use (tests/teachers/F), every byte of every file (of a safetensors file: its metadata and its
tensors' bytes, since the order of its metadata is its own); --write replaces each that differs with the new one
(after a change to `bench teach`).
Teaching runs on one thread, so a CPU of the same kind with the same torch build reproduces it bit for bit.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from world_checks import DI_PP_RATE, ema_metrics, exact_floor, guided_mean_shift, shift_towards, trainer_on

COMMITTED_TEACHERS = Path(__file__).resolve().parent.parent / "tests" / "teachers"
GUIDED_WORLD = dict(prompts=2, components=1, s0=1.0)
GUIDED_T = 0.2


def train_on(folder: Path, family: str, method: str, alpha: float, steps: int, *settings: str, batch: int = 32):
    """Metrics of the EMA generator before and after `steps` updates, the floor of its FDs, p*'s, and the trainer."""
    trainer = trainer_on(folder, family, f"method={method}", f"method.alpha_rew={alpha}", *settings, batch=batch)
    start = ema_metrics(trainer)
    for _ in range(steps):
        trainer.step_once()
    return start, ema_metrics(trainer), exact_floor(trainer), trainer.backend.describe_optimum(512, 0), trainer


def change(start: float, end: float, floor: float) -> str:
    """An FD's fall, above the floor of as many exact samples."""
    fall = 1 - (end - floor) / (start - floor)
    where = f"{fall:.0%} down" if fall >= 0 else f"{-fall:.0%} up"
    return f"{start:.2f} -> {end:.2f}, floor {floor:.2f}: {where}"


def family_row(family: str, steps: int, batch: int, committed: bool) -> str:
    """The table's row of one family: taught afresh (and compared with the committed teacher), or the committed one."""
    import json

    from bench.config import TrainConfig
    from bench.teach import TeachConfig, teach

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        if committed:
            folder, taught = COMMITTED_TEACHERS / family, "committed"
        else:
            began = time.perf_counter()
            folder = teach(TeachConfig(family=family, out=str(Path(root) / family)), progress=False)
            taught_in = time.perf_counter() - began
            files, differ = differences(folder, COMMITTED_TEACHERS / family)
            taught = f"{taught_in:.0f} s (" + (f"{len(differ)} of {files} files differ from the committed"
                                               if differ else "= the committed one") + ")"
        report = json.loads((folder / "teacher.json").read_text())
        error = max(row["conditional"] for row in report["eps_error"].values())
        sampler = report["sampler"]
        rate = DI_PP_RATE.get(family, TrainConfig().lr_gen)
        di_start, di_end, di_floor, _, _ = train_on(folder, family, "di_pp", 0.0, steps, f"train.lr_gen={rate}",
                                                    batch=batch)
        kl_start, kl_end, kl_floor, optimum, trainer = train_on(folder, family, "kl_rlhf", 20.0, steps, batch=batch)
        _, seen = shift_seen(trainer)
    gap = optimum["reward"] - kl_start["reward"]
    where = "past p*" if (kl_end["reward"] - optimum["reward"]) * gap > 0 else "left"
    return (f"| {family} | {taught} | {error:.4f} | "
            f"{sampler['fd']:.3f} / {sampler['fd_exact_eps']:.3f} / "
            f"{sampler['fd_exact_samples']:.3f} ({sampler['fd'] / sampler['fd_exact_samples']:.1f}x floor) | "
            f"{sampler['coverage']:.2f} | {change(di_start['fd_ref'], di_end['fd_ref'], di_floor['fd_ref'])} "
            f"(lr_gen {rate:g}) | "
            f"{kl_start['reward']:.3f} -> {kl_end['reward']:.3f}, p* {optimum['reward']:.3f} "
            f"({abs(optimum['reward'] - kl_end['reward']) / abs(gap):.0%} of the gap {where}; "
            f"t {trainer.method.t_min:g}, the teacher sees {seen:.0%} of the move) | "
            f"{change(kl_start['fd_star'], kl_end['fd_star'], kl_floor['fd_star'])} |")


def guided_run(folder: Path, family: str, scale: float, steps: int) -> list[str]:
    """KL-RLHF at t 0.2 under guidance `scale` on the two-caption world: rows every 100 steps."""
    torch.set_num_threads(1)
    trainer = trainer_on(folder, family, "method=kl_rlhf", "method.alpha_rew=0", f"method.alpha_cfg={scale}",
                         f"method.t_min={GUIDED_T}", "method.fake_steps=4", "train.lr_fake=1e-3")
    backend, world = trainer.backend, trainer.backend.world.reference
    own, other = world.means[0, 0], world.means[1, 0]
    alpha, sigma = (float(v) for v in backend.schedule.alpha_sigma(torch.tensor(GUIDED_T)))
    expected = guided_mean_shift(own, other, world.var, alpha, sigma, scale)
    ids = torch.zeros(1024, dtype=torch.long)
    z = torch.randn((len(ids), *backend.shape), generator=torch.Generator().manual_seed(99))
    rows = []
    for step in range(steps + 1):
        if step % 100 == 0:
            with torch.no_grad(), trainer.ema.applied(trainer.unwrapped(trainer.generator)) as generator:
                x = generator(z, backend.encode(ids)).float().flatten(1)
            rows.append(f"| {scale:g} | {step} | {shift_towards(x, own, other):+.3f} | {expected:+.3f} | "
                        f"{float(x.std(0).mean()):.3f} |")
        if step < steps:
            trainer.step_once()
    error, with_fake, exact = fake_check(trainer, scale, own, other)
    rows.append(f"| {scale:g} | {steps}, fake check | fake eps error {error:.0%} of the generator's | "
                f"pull: {with_fake:+.3f} with the fake, {exact:+.3f} exact | |")
    return rows


@torch.no_grad()
def fake_check(trainer, scale: float, own, other, n: int = 2048) -> tuple[float, float, float]:
    """Where the fake score leaves the generator, at t 0.2 on caption 0, read through the regulariser's own batch
    (trainer.generator_batch): the fake's eps error relative to the exact eps of a Gaussian fitted to the generator's
    samples (its law is one Gaussian-like mode here), and the pull E[s_guided - s_theta] on x_t along the line, with
    the fake's score and the reference's guided one, and exact (the Gaussian's score, the world's guided one).
    > 0: gradient descent moves the samples towards the other caption."""
    from bench.diffusion import guided
    from bench.teach import exact_eps

    backend, world = trainer.backend, trainer.backend.world.reference
    ids = torch.zeros(n, dtype=torch.long)
    rng = torch.Generator().manual_seed(7)
    cond = backend.encode(ids)
    x0 = trainer.unwrapped(trainer.generator)(torch.randn((n, *backend.shape), generator=rng), cond).float()
    b = trainer.generator_batch(x0, torch.full((n,), GUIDED_T), torch.randn(x0.shape, generator=rng), cond)
    flat, x_t = x0.flatten(1), b.x_t.flatten(1)
    a, s = float(b.alpha.flatten()[0]), float(b.sigma.flatten()[0])
    precision = torch.linalg.inv(a * a * torch.cov(flat.T) + s * s * torch.eye(flat.shape[1]))
    score_generator = -(x_t - a * flat.mean(0)) @ precision
    score_fake = b.fake_score(b.x_t).flatten(1)
    exact_u, exact_c = (-exact_eps(world, b.x_t, b.alpha.flatten(), b.sigma.flatten(), c).flatten(1) / s
                        for c in (None, ids))
    error = float((score_fake - score_generator).pow(2).mean() / score_generator.pow(2).mean())
    direction = (other - own) / (other - own).norm()
    with_fake = float(((b.ref_score(b.x_t, scale).flatten(1) - score_fake) @ direction).mean())
    exact = float(((guided(exact_c, exact_u, scale) - score_generator) @ direction).mean())
    return error, with_fake, exact


def guidance(family: str, steps: int, jobs: int) -> None:
    import json

    from bench.teach import TeachConfig, teach

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        folder = teach(TeachConfig(family=family, out=str(Path(root) / family), **GUIDED_WORLD), progress=False)
        report = json.loads((folder / "teacher.json").read_text())
        at = report["eps_error"]["200"]
        print(f"{family} teacher on two overlapping captions: eps error at timestep 200 {at['conditional']:.4f} "
              f"(unconditional {at['unconditional']:.4f}) against the exact eps's mean square "
              f"{at['exact_mean_square']:.3f}; sampler FD {report['sampler']['fd']:.2f}, exact samples "
              f"{report['sampler']['fd_exact_samples']:.2f}\n")
        print("| guidance scale | step | mean shift towards the other caption | closed form | spread |")
        print("|---|---|---|---|---|")
        scales = (1.0, 3.0, 0.5)
        with ProcessPoolExecutor(jobs) as pool:
            for rows in pool.map(guided_run, [folder] * len(scales), [family] * len(scales), scales,
                                 [steps] * len(scales)):
                print("\n".join(rows), flush=True)


OVERSHOOT_RUNS = (("none", (), 200), ("four fake updates a step", ("method.fake_steps=4",), 400),
                  ("generator lr 0.01 (default 0.03)", ("train.lr_gen=0.01",), 300),
                  ("generator lr 0.003", ("train.lr_gen=0.003",), 600),
                  ("fake lr 3e-3 (default 1e-3)", ("train.lr_fake=3e-3",), 300),
                  ("fake lr 1e-4", ("train.lr_fake=1e-4",), 300))


def reward_run(folder: Path, family: str, settings: tuple[str, ...], steps: int) -> tuple[list[float], tuple]:
    """KL-RLHF at alpha_rew 20: the EMA generator's reward every 100 steps, and at the end what its regulariser sees
    (shift_seen)."""
    torch.set_num_threads(1)
    trainer = trainer_on(folder, family, "method=kl_rlhf", "method.alpha_rew=20", *settings)
    rewards = []
    for step in range(1, steps + 1):
        trainer.step_once()
        if step % 100 == 0:
            rewards.append(ema_metrics(trainer)["reward"])
    return rewards, shift_seen(trainer)


@torch.no_grad()
def shift_seen(trainer, n: int = 1024) -> tuple[float, float]:
    """What KL-RLHF's regulariser sees of the generator's move, at its time on the generator's own x_t, caption by
    caption, averaged: (1) the fake's share of it, <E[D_fake - D_ref], m> / <m, m> with m = E[x0] - E[D_ref] (the
    move as the teacher's denoiser sees it; a fake that has learnt the generator's law gives E[D_fake] = E[x0]);
    (2) |m| over the same with the world's exact posterior mean for D_ref (below 1: the teacher sees less of the
    move than there is)."""
    backend = trainer.backend
    rng = torch.Generator().manual_seed(5)
    ids = torch.arange(len(backend.captions)).repeat_interleave(n // len(backend.captions))
    cond = backend.encode(ids)
    x0 = trainer.unwrapped(trainer.generator)(torch.randn((len(ids), *backend.shape), generator=rng), cond).float()
    b = trainer.generator_batch(x0, trainer.method.sample_t(len(ids), rng), torch.randn(x0.shape, generator=rng),
                                cond)
    fake, taught = ((b.x_t + b.sigma**2 * score(b.x_t)) / b.alpha for score in (b.fake_score, b.ref_cond))
    exact = backend.world.reference.denoise(b.x_t, b.alpha.flatten(), b.sigma.flatten(), ids)
    shares, seen = [], []
    for caption in ids.unique():
        x0_mean, fake_mean, taught_mean, exact_mean = (x[ids == caption].flatten(1).mean(0)
                                                       for x in (x0, fake, taught, exact))
        move = x0_mean - taught_mean
        shares.append(float((fake_mean - taught_mean) @ move / (move @ move)))
        seen.append(float(move.norm() / (x0_mean - exact_mean).norm()))
    return sum(shares) / len(shares), sum(seen) / len(seen)


def reward_gradient_ratio(trainer, time: float) -> float:
    """|grad_x_t r(D_teacher(x_t))| over |grad_x_t r(D_exact(x_t))| on the world's noisy samples at `time`: how much
    harder the teacher's denoiser carries a latent linear reward to x_t than the world's posterior mean does."""
    from bench.diffusion import noised

    backend, world = trainer.backend, trainer.backend.world.reference
    rng = torch.Generator().manual_seed(0)
    ids = torch.arange(len(backend.captions)).repeat_interleave(128)
    x0 = world.sample(ids, rng).reshape(len(ids), *backend.shape)
    t = torch.full((len(ids),), time)
    alpha, sigma, x_t = noised(backend.schedule, x0, t, torch.randn(x0.shape, generator=rng))
    x_t.requires_grad_(True)
    score = backend.ref_score(x_t, t, alpha, sigma, backend.encode(ids))
    taught = (x_t + sigma[:, None, None, None] ** 2 * score) / alpha[:, None, None, None]
    exact = world.denoise(x_t.flatten(1), alpha, sigma, ids).reshape(x0.shape)
    grads = [torch.autograd.grad(backend.scores(d, ids).sum(), x_t, retain_graph=True)[0].flatten(1)
             for d in (taught, exact)]
    return float(grads[0].norm(dim=1).mean() / grads[1].norm(dim=1).mean())


def overshoot(family: str, s0: float, jobs: int) -> None:
    from bench.teach import TeachConfig, teach

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        folder = teach(TeachConfig(family=family, out=str(Path(root) / family), s0=s0), progress=False)
        trainer = trainer_on(folder, family, "method=kl_rlhf", "method.alpha_rew=20")
        ratio = reward_gradient_ratio(trainer, 0.02)
        optimum = trainer.backend.describe_optimum(512, 0)["reward"]
        start = ema_metrics(trainer)["reward"]
        print(f"{family} teacher, s0 {s0:g}: the reward's gradient through its denoiser at t 0.02 is {ratio:.2f} "
              f"times the exact one. KL-RLHF, alpha_rew 20: reward {start:.3f} at the start, p* {optimum:.3f}\n")
        print("| change to the defaults | reward every 100 steps | at the end: the fake's share of the move the "
              "teacher's denoiser sees | that move against the exact denoiser's |")
        print("|---|---|---|---|")
        with ProcessPoolExecutor(jobs) as pool:
            runs = pool.map(reward_run, [folder] * len(OVERSHOOT_RUNS), [family] * len(OVERSHOOT_RUNS),
                            [settings for _, settings, _ in OVERSHOOT_RUNS], [n for _, _, n in OVERSHOOT_RUNS])
            for (name, _, _), (rewards, (share, seen)) in zip(OVERSHOOT_RUNS, runs, strict=True):
                print(f"| {name} | {' / '.join(f'{r:.3f}' for r in rewards)} | {share:.2f} | {seen:.2f} |", flush=True)


def content(path: Path):
    """A file's bytes; a safetensors file's metadata and tensors' bytes, since safetensors writes its metadata in an
    order of its own, which differs from one process to the next."""
    from safetensors import safe_open

    if not path.is_file() or path.suffix != ".safetensors":
        return path.is_file() and path.read_bytes()
    with safe_open(str(path), "pt") as tensors:
        return tensors.metadata(), {key: tensors.get_tensor(key).numpy().tobytes() for key in sorted(tensors.keys())}


def differences(fresh: Path, committed: Path) -> tuple[int, list[str]]:
    """How many files the two folders hold between them, and those whose contents differ."""
    files = {path.relative_to(folder) for folder in (fresh, committed) for path in folder.rglob("*") if path.is_file()}
    return len(files), [str(name) for name in sorted(files) if content(fresh / name) != content(committed / name)]


def reproduce(family: str, write: bool) -> str:
    from bench.teach import TeachConfig, teach

    torch.set_num_threads(1)
    committed = COMMITTED_TEACHERS / family
    with tempfile.TemporaryDirectory() as root:
        began = time.perf_counter()
        fresh = teach(TeachConfig(family=family, out=str(Path(root) / family)), progress=False)
        line = f"{family}: taught in {time.perf_counter() - began:.0f} s; "
        files, differ = differences(fresh, committed)
        line += f"{files - len(differ)} of {files} files identical"
        if differ:
            line += f"; differ: {differ}"
        if write and differ:
            shutil.rmtree(committed, ignore_errors=True)
            shutil.copytree(fresh, committed)
            line += f"; wrote {committed}"
    return line


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", default="sd15,pixart_alpha,sdxl,sd3")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps of each method on a teacher (300; with --guidance 800)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="the methods' batch on each teacher (the tests': 16)")
    parser.add_argument("--committed", action="store_true",
                        help="train on the committed teachers (tests/teachers) instead of teaching each family")
    parser.add_argument("--guidance", action="store_true", help="the guidance criterion instead (see above)")
    parser.add_argument("--overshoot", action="store_true", help="KL-RLHF's reward overshoot instead (see above)")
    parser.add_argument("--family", default=None, help="the family of --guidance (sdxl) or --overshoot (sd15)")
    parser.add_argument("--s0", type=float, default=0.1, help="the world's s0 of --overshoot")
    parser.add_argument("--reproduce", action="store_true", help="teach the tests' teachers again (see above)")
    parser.add_argument("--write", action="store_true", help="with --reproduce: replace those that differ")
    args = parser.parse_args()
    if args.reproduce:
        families = args.families.split(",")
        with ProcessPoolExecutor(args.jobs) as pool:
            for line in pool.map(reproduce, families, [args.write] * len(families)):
                print(line, flush=True)
        return None
    if args.guidance:
        return guidance(args.family or "sdxl", args.steps or 800, args.jobs)
    if args.overshoot:
        return overshoot(args.family or "sd15", args.s0, args.jobs)
    families, args.steps = args.families.split(","), args.steps or 300
    print("| family | taught in | teacher's largest eps error | sampler FD: teacher / exact eps / exact samples | "
          f"coverage | DI++ alpha 0, FD to the mixture ({args.steps} steps) | KL-RLHF alpha 20: reward | "
          "KL-RLHF: FD to p* |")
    print("|---|---|---|---|---|---|---|---|")
    with ProcessPoolExecutor(args.jobs) as pool:
        for row in pool.map(family_row, families, [args.steps] * len(families), [args.batch] * len(families),
                            [args.committed] * len(families)):
            print(row, flush=True)


if __name__ == "__main__":
    main()
