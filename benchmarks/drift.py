"""Drift: does a generator with nothing to gain stay at the reference? Exact KL to the reference, by factor.

    python benchmarks/drift.py ablation [--steps 1500]      # the README's table: one factor changed at a time
    python benchmarks/drift.py probe                        # the fake score's noise, seen by a frozen generator
    python benchmarks/drift.py worlds [--steps 5000]        # every method on the default world and the family
    python benchmarks/drift.py optimum [--steps 1200]       # KL-RLHF and DIDR: kl_star, start and end, alpha_rew 5, 20
    python benchmarks/drift.py collapse [--steps 1200]      # kl_star's old floor: the generator's correction from z
    python benchmarks/drift.py kl_time [--steps 5000]       # KL-RLHF's units and time, with more and fewer fake updates
    python benchmarks/drift.py runaway [--steps 5000]       # DI++, DI* default runs (alpha_rew 0.2): precision, folds
    python benchmarks/drift.py gradients [--steps 300]      # each method's generator gradient norm, before the clip
    python benchmarks/drift.py compute [--steps 1500]       # every method: more fake updates, four times the batch

Every run is DI* (the default method, or the one named) with alpha_rew 0 and alpha_cfg 1 from the default start,
whose law is the reference's up to the ODE's error (0.11 nats on the default world); the KL is exact (change of
variables, 16 samples a caption, EMA weights). Runs go two at a time, one thread each. Figures print; nothing here
is a test.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from bench.backends import analytic
from bench.config import build_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from world_checks import exact_kls, generated, train, trainer_for, unprecondition

# The generator as it was before its correction read the base's sample: a function of the noise alone.
NOISE_ONLY = "NOISE_ONLY"
OLD = ["train.optimizer=adam", "train.lr_gen=3e-4", "UNPRECONDITIONED"]
# (label, overrides): the fixed trainer first, then the trainer as it was (Adam generator, eps-space correction)
# and every factor the issue named, each changed alone.
ABLATION = [
    ("this trainer (SGD generator, preconditioned fake)", []),
    ("  generator on Adam (lr 3e-4, the old default)", ["train.optimizer=adam", "train.lr_gen=3e-4"]),
    ("  fake correction unpreconditioned (eps space)", ["UNPRECONDITIONED"]),
    ("  fake_steps 4", ["method.fake_steps=4"]),
    ("  batch 512", ["train.batch_size=512"]),
    ("  lr_gen 0.1", ["train.lr_gen=0.1"]),
    ("  generator's correction from the noise alone", [NOISE_ONLY]),
    ("the old trainer (both)", OLD),
    ("  lr_gen 3e-5", [*OLD, "train.lr_gen=3e-5"]),
    ("  lr_fake 1e-4", [*OLD, "train.lr_fake=1e-4"]),
    ("  fake_steps 4", [*OLD, "method.fake_steps=4"]),
    ("  batch 512", [*OLD, "train.batch_size=512"]),
    ("  Adam beta1 0.9", [*OLD, "train.beta1=0.9"]),
    ("  weighting uniform", [*OLD, "method.weighting=uniform"]),
    ("  no EMA", [*OLD, "train.ema=0"]),
    ("old generator (Adam), preconditioned fake", ["train.optimizer=adam", "train.lr_gen=3e-4"]),
    ("  Adam beta1 0.99 (heavy momentum)", ["train.optimizer=adam", "train.lr_gen=3e-4", "train.beta1=0.99"]),
]
# The family of the KL-RLHF test plus the default world: the same settings everywhere, no per-world tuning.
WORLDS = {
    "default (8 px, 8 captions, 4 modes, s0 0.1)": "",
    "2 modes, s0 0.2, 4 px": "seed=0 backend.components=2 backend.s0=0.2 backend.image_size=4 backend.prompts=3",
    "3 modes, s0 0.08, 5 px": "seed=1 backend.components=3 backend.s0=0.08 backend.image_size=5 backend.prompts=3",
    "4 skewed modes, s0 0.15, 6 px": "seed=2 backend.components=4 backend.skew=1 backend.s0=0.15 "
                                     "backend.image_size=6 backend.prompts=2",
    "3 skewed modes, s0 0.12, 4 px": "seed=3 backend.components=3 backend.skew=1.5 backend.s0=0.12 "
                                     "backend.image_size=4 backend.prompts=3",
    "2 modes, s0 0.2, 8 px": "seed=4 backend.components=2 backend.s0=0.2 backend.image_size=8 backend.prompts=2",
    "4 modes, s0 0.18, 8 px": "seed=5 backend.components=4 backend.s0=0.18 backend.image_size=8 backend.prompts=2",
}


class NoiseOnly(torch.nn.Module):
    """The old generator's correction: handed [z, base sample], it reads z alone."""

    def __init__(self, residual: torch.nn.Module, dim: int):
        super().__init__()
        self.inner, self.dim = residual, dim

    def forward(self, features: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.inner(features[:, : self.dim], cond)


@contextlib.contextmanager
def noise_only_generators():
    """Analytic generators built inside the block correct from the noise alone, as before."""
    original = analytic.Generator.__init__

    def old_init(self, reference, schedule, init, t_init, shape, hidden):
        original(self, reference, schedule, init, t_init, shape, hidden)
        dim = math.prod(shape)
        self.residual = NoiseOnly(analytic.ResidualMLP(dim, dim, reference.means.shape[0], hidden, timed=False), dim)

    analytic.Generator.__init__ = old_init
    try:
        yield
    finally:
        analytic.Generator.__init__ = original


def build(args: list[str]):
    # A row changes the old trainer's keys: the later value of a key wins.
    merged = dict(arg.split("=", 1) for arg in ["threads=1", "method.alpha_rew=0", *args] if "=" in arg)
    with noise_only_generators() if NOISE_ONLY in args else contextlib.nullcontext():
        trainer = trainer_for([f"{key}={value}" for key, value in merged.items()])
    if "UNPRECONDITIONED" in args:
        unprecondition(trainer)
    return trainer


def drift(args: list[str], steps: int, per_caption: int = 16) -> dict:
    trainer = build(args)
    start = exact_kls(trainer, per_caption=per_caption, ema=False)
    began = time.perf_counter()
    train(trainer, steps)
    seconds = time.perf_counter() - began
    end = exact_kls(trainer, per_caption=per_caption)
    metrics, _ = trainer.backend.metrics_of(*generated(trainer, 256), seed=0)
    return {"start": start, "end": end, "precision": metrics["precision"], "coverage": metrics["coverage"],
            "reward": metrics["reward"], "seconds": seconds}


def run_all(jobs: list[tuple[str, list[str]]], steps: int, work=None):
    """(label, work(args, steps)) in the jobs' order, each as soon as it and those before it are done; work is
    drift unless named."""
    with ProcessPoolExecutor(2) as pool:
        yield from zip([label for label, _ in jobs],
                       pool.map(work or drift, [a for _, a in jobs], [steps] * len(jobs)), strict=True)


def ablation(steps: int) -> None:
    print(f"DI*, alpha_rew 0, default world, {steps} steps: exact KL to the reference (nats)\n")
    print("| factor | KL start | KL end | precision | coverage |\n|---|---|---|---|---|")
    for label, r in run_all(ABLATION, steps):
        print(f"| {label} | {r['start']['kl_ref']:.2f} | {r['end']['kl_ref']:.2f} | {r['precision']:.3f} | "
              f"{r['coverage']:.2f} |", flush=True)


def worlds(steps: int, methods: list[str]) -> None:
    jobs = [(f"{world} | {method}", [f"method={method}", *args.split()])
            for world, args in WORLDS.items() for method in methods]
    print(f"alpha_rew 0, alpha_cfg 1, {steps} steps, default settings: exact KL to the reference (nats)\n")
    print("| world | method | KL start | KL end | end - start | precision | coverage |\n|---|---|---|---|---|---|---|")
    for label, r in run_all(jobs, steps):
        start, end = r["start"]["kl_ref"], r["end"]["kl_ref"]
        print(f"| {label} | {start:.2f} | {end:.2f} | {end - start:+.2f} | {r['precision']:.3f} | "
              f"{r['coverage']:.2f} |", flush=True)


# KL-RLHF with nothing to gain, on the smallest world, where it drifted most: its loss in the denoiser's units (the
# default) against the score's units (w = 1, the old default), each with more and fewer fake updates and at the old
# time 0.005.
KL_TIME_WORLD = "2 modes, s0 0.2, 4 px"
SCORE_UNITS = ["method.weighting=uniform"]
KL_TIME = [
    ("denoiser's units, 1 fake update (the default)", []),
    ("  fake_steps 4", ["method.fake_steps=4"]),
    ("  t 0.005", ["method.t_min=0.005"]),
    ("score's units, fake_steps 4 (the old default)", [*SCORE_UNITS, "method.fake_steps=4"]),
    ("  fake_steps 2", [*SCORE_UNITS, "method.fake_steps=2"]),
    ("  fake_steps 1", SCORE_UNITS),
    ("  fake_steps 4, t 0.005", [*SCORE_UNITS, "method.fake_steps=4", "method.t_min=0.005"]),
]


def kl_time(steps: int) -> None:
    jobs = [(f"{KL_TIME_WORLD} | {label}", ["method=kl_rlhf", *WORLDS[KL_TIME_WORLD].split(), *extra])
            for label, extra in KL_TIME]
    print(f"KL-RLHF, alpha_rew 0, {steps} steps: exact KL to the reference (nats)\n")
    print("| world | setting | KL start | KL end | precision |\n|---|---|---|---|---|")
    for label, r in run_all(jobs, steps):
        print(f"| {label} | {r['start']['kl_ref']:.2f} | {r['end']['kl_ref']:.2f} | {r['precision']:.3f} |", flush=True)


def default_run(args: list[str], steps: int) -> dict:
    """A default run of `steps` (its own alpha_rew), judged by its final evaluation: 1,024 samples and the exact KL."""
    trainer = trainer_for(["threads=1", *args])
    train(trainer, steps)
    generator = trainer.unwrapped(trainer.generator)
    with trainer.ema.applied(generator):
        metrics, _ = trainer.backend.evaluate(generator, 1024, seed=1234)
    return metrics


def gradient_norms(args: list[str], steps: int) -> list[float]:
    trainer = build(args)
    return [float(trainer.step_once()["grad_gen"]) for _ in range(steps)]


def gradients(steps: int) -> None:
    """The generator's gradient norm before clipping (train.grad_clip 3), alpha_rew 0, the default world: a method
    whose norm is always above the clip steps lr x clip whatever its gradient says."""
    jobs = [(method, [f"method={method}"]) for method in EVERY_METHOD.split(",")] + [
        ("kl_rlhf in the score's units", ["method=kl_rlhf", *SCORE_UNITS]),
        ("kl_rlhf in the score's units, t 0.005", ["method=kl_rlhf", *SCORE_UNITS, "method.t_min=0.005"])]
    print(f"alpha_rew 0, default world, {steps} steps: generator gradient norm before the clip at 3\n")
    print("| method | median | 10th percentile | 90th percentile |\n|---|---|---|---|")
    for label, norms in run_all(jobs, steps, gradient_norms):
        q = torch.tensor(norms).quantile(torch.tensor([0.5, 0.1, 0.9])).tolist()
        print(f"| {label} | {q[0]:.3f} | {q[1]:.3f} | {q[2]:.3f} |", flush=True)


def runaway(steps: int) -> None:
    jobs = [(method, [f"method={method}"]) for method in ("di_pp", "di_star")]
    print(f"default world, default settings (alpha_rew 0.2), {steps} steps: the final evaluation\n")
    print("| method | precision | coverage | kl_folded | KL to reference | reward |\n|---|---|---|---|---|---|")
    for method, m in run_all(jobs, steps, default_run):
        print(f"| {method} | {m['precision']:.3f} | {m['coverage']:.2f} | {m['kl_folded']:.3f} | "
              f"{m['kl_ref']:.2f} | {m['reward']:.3f} |", flush=True)


def compute(steps: int, methods: list[str]) -> None:
    """More compute must never end farther from the reference: each method at its defaults, with four times its
    fake-score updates a step (one by default, DMD's five), and with four times the batch."""
    more_fake = {method: 4 * build_config([f"method={method}"]).method.fake_steps for method in methods}
    jobs = [(f"{method} | {label}", [f"method={method}", *args]) for method in methods for label, args in (
        ("default", []), (f"fake_steps {more_fake[method]}", [f"method.fake_steps={more_fake[method]}"]),
        ("batch 512", ["train.batch_size=512"]))]
    print(f"alpha_rew 0, default world, {steps} steps: exact KL to the reference (nats, 64 samples a caption)\n")
    print("| method | compute | KL start | KL end (standard error) | precision |\n|---|---|---|---|---|")
    for label, r in run_all(jobs, steps, functools.partial(drift, per_caption=64)):
        print(f"| {label} | {r['start']['kl_ref']:.2f} | {r['end']['kl_ref']:.2f} ({r['end']['kl_ref_se']:.2f}) | "
              f"{r['precision']:.3f} |", flush=True)


def optimum(steps: int, methods: list[str]) -> None:
    """The methods whose optimum is p* (KL-RLHF, DIDR) against their own objective: kl_star = KL(p_theta || p*) at
    the start and the end, on the default world and the worlds of KL-RLHF's family test, at alpha_rew 5 and 20."""
    from test_kl_rlhf_family import WORLDS as FAMILY

    # The last world is in no test: a linear reward at s0 0.12, where p* moves each mode by only 20 s0^2.
    worlds = {"default (linear)": "", **FAMILY,
              "held out: 3 modes, linear, s0 0.12, 6 px": "seed=7 backend.components=3 reward=linear backend.s0=0.12 "
                                                          "backend.image_size=6 backend.prompts=3"}
    jobs = [(f"{world} | {method} | {alpha}", [f"method={method}", f"method.alpha_rew={alpha}", *args.split()])
            for world, args in worlds.items() for method in methods for alpha in (5, 20)]
    print(f"{steps} steps, default settings: exact KL(p_theta || p*) in nats\n")
    print("| world | method | alpha_rew | kl_star start | kl_star end | end / start | KL to reference end |\n"
          "|---|---|---|---|---|---|---|")
    for label, r in run_all(jobs, steps):
        start, end = r["start"]["kl_star"], r["end"]["kl_star"]
        print(f"| {label} | {start:.2f} | {end:.2f} | {end / start:.2f} | {r['end']['kl_ref']:.2f} |", flush=True)


COLLAPSE_WORLD = "3 modes, quadratic, s0 0.08"


def collapse(steps: int) -> None:
    """Where KL-RLHF's kl_star stopped in the score's units, 1.1 to 1.3 nats on the quadratic s0 0.08 world, with a
    generator correcting from the noise alone; now, in the denoiser's units, for both generators: the spread
    within each mode of p*, as eigenvalues of the sample covariance over p*'s variance (the lowest two; exact
    samples give about 0.66 from 2,000 samples in 75 dimensions), and how much of the lowest one's direction lies
    in the span of the caption's mode differences (a random direction: 0.16)."""
    from test_kl_rlhf_family import WORLDS as FAMILY

    world = FAMILY[COLLAPSE_WORLD].split()
    jobs = [(f"{label} | {alpha} | {t}", ["method=kl_rlhf", f"method.alpha_rew={alpha}", f"method.t_min={t}", *world,
                                          *extra])
            for label, extra in (("correction from z and the base sample (now)", []),
                                 ("correction from z alone (before)", [NOISE_ONLY]))
            for alpha, t in ((5, 0.02), (20, 0.02), (5, 0.05))]
    # What did not lift the old floor: more fake-score compute, and the generator's optimiser settings.
    jobs += [(f"  before, {label} | 5 | 0.02", ["method=kl_rlhf", "method.alpha_rew=5", *world, NOISE_ONLY, *extra])
             for label, extra in (("fake_steps 8", ["method.fake_steps=8"]), ("batch 512", ["train.batch_size=512"]),
                                  ("lr_gen 0.01", ["train.lr_gen=0.01"]), ("EMA 0.999", ["train.ema=0.999"]))]
    print(f"KL-RLHF on the {COLLAPSE_WORLD} world, {steps} steps\n")
    print("| generator | alpha_rew | t | kl_star start | kl_star end | lowest eigenvalues | in mode differences |\n"
          "|---|---|---|---|---|---|---|")
    for label, r in run_all(jobs, steps, spread):
        print(f"| {label} | {r['start']:.2f} | {r['end']:.2f} | {r['low'][0]:.2f}, {r['low'][1]:.2f} | "
              f"{r['along']:.2f} |", flush=True)


def spread(args: list[str], steps: int) -> dict:
    trainer = build(args)
    start = exact_kls(trainer, ema=False)["kl_star"]
    train(trainer, steps)
    end = exact_kls(trainer)["kl_star"]
    optimum = trainer.backend.optimum
    x, cond = generated(trainer, 6000)
    flat = x.flatten(1).double()
    component = optimum.assign(flat.float(), cond)
    lows, alongs = [], []
    for caption in range(len(trainer.backend.captions)):
        means = optimum.means[caption].double()
        for k in range(len(means)):
            mine = flat[(cond == caption) & (component == k)]
            values, vectors = torch.linalg.eigh(torch.cov(mine.T) / optimum.var)
            differences = torch.linalg.qr(torch.stack([means[j] - means[k] for j in range(len(means)) if j != k]).T)[0]
            lows.append(values[:2])
            alongs.append(float((differences.T @ vectors[:, 0]).norm()))
    return {"start": start, "end": end, "low": torch.stack(lows).mean(0).tolist(), "along": sum(alongs) / len(alongs)}


def probe(steps: int = 600, fake_updates: int = 400) -> None:
    """The generator gradient the fake score induces, with the generator frozen: at the start (whose law is the
    reference's) and after `steps` of drift. A fake that resolves the generator's deviation gives a gradient of
    a consistent direction that grows with the deviation; one that does not gives noise of the same size at both.
    """
    for label, args in (("old trainer", OLD), ("this trainer", [])):
        trainer = build(args)
        for phase in ("start", "drifted"):
            if phase == "drifted":
                train(trainer, steps)
            kl = exact_kls(trainer, per_caption=16, ema=False)["kl_ref"]
            gradients = []
            for update in range(fake_updates):
                trainer.counters.step = 100_000 + update
                trainer.fake_update()
                if (update + 1) % 100 == 0:
                    gradients.append(induced_gradient(trainer))
            norms = [float(g.norm()) for g in gradients]
            cosines = [float(torch.nn.functional.cosine_similarity(a, b, 0)) for a, b in
                       itertools.pairwise(gradients)]
            # The same fake on an independent batch: a cosine near 1 says the noise is the fake's, shared by the
            # whole batch, which a larger generator batch cannot average away.
            across = float(torch.nn.functional.cosine_similarity(gradients[-1], induced_gradient(trainer, seed=1), 0))
            print(f"{label:>13}, generator at its {phase:<7} (KL {kl:5.2f}): |gradient| {sum(norms) / len(norms):.3f}, "
                  f"cosine between fake states 100 updates apart {sum(cosines) / len(cosines):+.2f}, between two "
                  f"batches {across:+.2f}", flush=True)


def induced_gradient(trainer, n: int = 2048, seed: int = 0) -> torch.Tensor:
    """The regulariser's gradient in the generator's parameters on one large batch (fixed by `seed`)."""
    rng = torch.Generator().manual_seed(10_000 + seed)
    backend = trainer.backend
    z, cond = backend.sample_inputs(n, rng)
    t = trainer.method.sample_t(n, rng)
    eps = torch.randn(z.shape, generator=rng)
    params = [p for p in trainer.generator.parameters() if p.requires_grad]
    batch = trainer.generator_batch(trainer.generator(z, cond), t, eps, cond)
    grads = torch.autograd.grad(trainer.method.regulariser(batch).mean(), params)
    return torch.cat([g.flatten() for g in grads])


EVERY_METHOD = "di_pp,di_star,kl_rlhf,dmd,didr"
# Each table: what prints it, its default number of steps, and the methods it runs by default (None: it takes none).
TABLES = {
    "ablation": (ablation, 1500, None),
    "probe": (probe, 600, None),
    "worlds": (worlds, 5000, EVERY_METHOD),
    "optimum": (optimum, 1200, "kl_rlhf,didr"),
    "collapse": (collapse, 1200, None),
    "compute": (compute, 1500, EVERY_METHOD),
    "kl_time": (kl_time, 5000, None),
    "runaway": (runaway, 5000, None),
    "gradients": (gradients, 300, None),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=TABLES)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--methods", default=None, help="comma-separated, for the tables that take methods")
    args = parser.parse_args()
    table, default_steps, default_methods = TABLES[args.what]
    methods = [] if default_methods is None else [(args.methods or default_methods).split(",")]
    table(args.steps or default_steps, *methods)


if __name__ == "__main__":
    main()
