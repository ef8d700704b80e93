"""Training on an analytic world, and what a trained generator's law looks like next to a target mixture.

Measurements use many samples a caption and compare with the target's exact moments and weights, so the
statistics resolve differences far below what a run's own periodic evaluation (a few hundred samples) can.
"""

from __future__ import annotations

import contextlib
import math

import torch

from bench.analytic.metrics import frechet_distance, generator_log_density, log_prob_clean, sample_moments
from bench.analytic.mixture import GaussianMixture
from bench.config import build_config
from bench.train.trainer import Trainer

QUIET = ["eval.grid=false", "train.eval_every=0", "eval.samples=64", "train.ckpt_every=100000"]


def trainer_for(args: list[str]) -> Trainer:
    """A trainer without a store: networks, noise and updates only (fit() needs a run; train() does not)."""
    return Trainer(build_config([*args, *QUIET]), run=None, progress=False)


def unprecondition(trainer: Trainer) -> None:
    """Put back a cause of the old drift: the analytic fake's correction in plain eps space (data_std -> infinity
    makes its preconditioning factor 1), where a unit of its jitter costs sigma / alpha in the denoiser."""
    trainer.unwrapped(trainer.fake).data_std = 1e12


def shift_towards(x: torch.Tensor, own: torch.Tensor, other: torch.Tensor) -> float:
    """Mean of samples x (of the caption whose mean is `own`) along the unit vector from `own` to `other`, less
    own's: the coordinate guided_mean_shift gives in closed form."""
    direction = (other - own) / (other - own).norm()
    return float(((x.flatten(1) - own) @ direction).mean())


def guided_mean_shift(own: torch.Tensor, other: torch.Tensor, var: float, alpha: float, sigma: float,
                      scale: float) -> float:
    """Where KL-RLHF at time t is smallest under guidance `scale` between two captions of one Gaussian each (means
    `own` and `other`, variance `var` a value, equal weights), q_t is the normalised p_c,t^w p_u,t^(1 - w); the
    generator's mean along the unit vector from `own` to `other`, less own's, is that density's mean over alpha_t
    on the line between the captions (the orthogonal directions cancel): a one-dimensional integral."""
    distance = float((other.double() - own.double()).norm())
    variance = alpha**2 * var + sigma**2
    u = torch.linspace(-20.0, distance + 20.0, 400_001, dtype=torch.float64)
    log_conditional = -(u**2) / (2 * variance)
    log_unconditional = torch.logaddexp(log_conditional, -((u - alpha * distance) ** 2) / (2 * variance))
    density = torch.softmax(scale * log_conditional + (1 - scale) * log_unconditional, 0)
    return float((density * u).sum() / alpha)


def train(trainer: Trainer, steps: int | None = None) -> None:
    """The trainer's own loop body (fake updates, generator update, EMA) without evaluation or checkpoints."""
    for _ in range(steps or trainer.cfg.train.steps):
        trainer.step_once()


# DI++ on PixArt's DiT at the default generator rate (0.03) oscillates: its FD fell 3.48 -> 1.66 by step 100, then
# rose to 3.04 by step 300 (seed 0); at 0.01 it falls every hundred steps (3.06, 1.99, 1.39, 1.27 at 400). The other
# families at 0.01 are slower (SDXL 1.80 at step 300 against 1.36), so the rate is the family's.
DI_PP_RATE = {"pixart_alpha": 0.01}


def trainer_on(folder, family: str, *settings: str, batch: int = 32) -> Trainer:
    """A trainer through the family's real backend on a taught folder: latent linear reward, one thread."""
    return Trainer(build_config([f"backend={family}", f"backend.model={folder}", "reward=linear",
                                 f"train.batch_size={batch}", "threads=1", *settings]), None, progress=False)


def taught_samples(trainer: Trainer) -> int:
    """How many samples a taught world's FDs are read on: two a latent value for each caption. The floor of the FD
    of as many exact samples is then a small part of the distance from a one-step start in any latent size (0.6 of
    2.6 to 5.0 for the VP families' 64 values, 128 a caption; 2.2 of 19 to 21 for SD3's 256, 512 a caption). Read on
    128 a caption, SD3's floor was 11.2, more than half its start, and since that bias grows with the law's own
    spread, KL-RLHF's generator widening towards p*'s read as falling 75% at step 100 and 55% at step 300, where
    1,024 a caption read 69% and 76%."""
    return 2 * math.prod(trainer.backend.shape) * len(trainer.backend.captions)


def ema_metrics(trainer: Trainer, total: int | None = None) -> dict[str, float]:
    """The backend's evaluation metrics of the EMA generator (on a taught world: its exact metrics and the reward),
    on `total` samples (taught_samples unless given)."""
    with trainer.ema.applied(trainer.unwrapped(trainer.generator)) as generator:
        return trainer.backend.evaluate(generator, total or taught_samples(trainer), 0)[0]


def exact_floor(trainer: Trainer, total: int | None = None, seed: int = 5) -> dict[str, float]:
    """What ema_metrics' FDs read on as many exact samples of the reference (fd_ref) and of p* (fd_star, where the
    world has one): the finite-sample floor those distances sit on, so that a fall is measured above it."""
    world, shape = trainer.backend.world, trainer.backend.shape
    cond = world.eval_captions(total or taught_samples(trainer))
    rng = torch.Generator().manual_seed(seed)
    floor = {"fd_ref": world.metrics(world.reference.sample(cond, rng).reshape(-1, *shape), cond, 0)[0]["fd_ref"]}
    if world.optimum is not None:
        floor["fd_star"] = world.metrics(world.optimum.sample(cond, rng).reshape(-1, *shape), cond, 0)[0]["fd_star"]
    return floor


def generated(trainer: Trainer, per_caption: int, seed: int = 99, ema: bool = True):
    """Samples of every caption from fixed noise: (x, caption ids)."""
    backend = trainer.backend
    cond = torch.arange(len(backend.captions)).repeat_interleave(per_caption)
    z = torch.randn((len(cond), *backend.shape), generator=torch.Generator().manual_seed(seed))
    generator = trainer.unwrapped(trainer.generator)
    with torch.no_grad():
        if not ema:
            return generator(z, cond), cond
        with trainer.ema.applied(generator) as averaged:
            return averaged(z, cond), cond


def law_stats(x: torch.Tensor, cond: torch.Tensor, target: GaussianMixture, reward) -> dict[str, float]:
    """Mean reward, Frechet distance to the target's exact moments (caption average), the largest total
    variation between sampled and target component weights, and the share of target components (of weight
    above 1e-3) that receive at least a quarter of their expected samples."""
    flat = x.flatten(1)
    captions = cond.unique().tolist()
    fd = sum(frechet_distance(*sample_moments(flat[cond == c]), *target.moments(c)) for c in captions)
    counts = target.means.shape[1]
    component = target.assign(flat, cond)
    sampled = torch.stack([torch.bincount(component[cond == c], minlength=counts).float() / (cond == c).sum()
                           for c in captions])
    weights = target.log_weights[captions].exp()
    covered = (sampled >= 0.25 * weights) | (weights < 1e-3)
    return {
        "reward": float(reward(x, cond).mean()),
        "fd": fd / len(captions),
        "tv": float(0.5 * (sampled - weights).abs().sum(1).max()),
        "coverage": float(covered.float().mean()),
    }


def exact_kls(trainer: Trainer, per_caption: int = 32, ema: bool = True, seed: int = 3) -> dict[str, float]:
    """KL(p_theta || p_ref) and, where the world has p*, KL(p_theta || p*) in nats, exact densities, caption average;
    with each its standard error over the samples (`kl_ref_se`, `kl_star_se`), to tell a difference from noise."""
    backend = trainer.backend
    laws = {"kl_ref": backend.reference, **({"kl_star": backend.optimum} if backend.optimum is not None else {})}
    z = torch.randn(per_caption, *backend.shape, generator=torch.Generator().manual_seed(seed))
    generator = trainer.unwrapped(trainer.generator)
    ratios: dict[str, list[torch.Tensor]] = {key: [] for key in laws}
    with trainer.ema.applied(generator) if ema else contextlib.nullcontext(generator) as model:
        for caption in range(len(backend.captions)):
            x, log_p = generator_log_density(model, z, caption)
            for key, law in laws.items():
                ratio = log_p - log_prob_clean(law, x, caption)
                ratios[key].append(ratio[ratio.isfinite()])
    out = {}
    for key, per_caption_ratios in ratios.items():
        out[key] = sum(float(r.mean()) for r in per_caption_ratios) / len(per_caption_ratios)
        centred = torch.cat([r - r.mean() for r in per_caption_ratios])
        out[f"{key}_se"] = float(centred.std() / len(centred) ** 0.5)
    return out
