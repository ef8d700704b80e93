"""Exact and sample-based metrics of the analytic world.

All are per caption and averaged over captions, because alignment is conditional: a generator that puts
every caption's samples in the right place for another caption must not score well.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.func import jacfwd, vmap

from bench.analytic.mixture import GaussianMixture

# alpha_rew values at which the closed-form optimum's reward and KL to the reference are tabulated: the bound
# a method's (KL, reward) points are read against.
OPTIMUM_CURVE = (0.0, 0.5, 1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 1000)


def sqrtm_psd(a: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(a)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor) -> float:
    """|m1 - m2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2), through symmetric square roots (stable)."""
    root1 = sqrtm_psd(cov1)
    cross = sqrtm_psd(root1 @ cov2 @ root1)
    return float((mean1 - mean2).pow(2).sum() + torch.trace(cov1 + cov2 - 2 * cross))


def sample_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / (x.shape[0] - 1)


def mmd2(x: Tensor, y: Tensor, bandwidth2: float) -> float:
    """Unbiased squared MMD with the Gaussian kernel exp(-|a - b|^2 / (2 h^2))."""
    def kernel(a, b):
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * bandwidth2))

    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    return float(
        (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        - 2 * kxy.mean()
    )


def generator_log_density(generator, z: Tensor, caption: int) -> tuple[Tensor, Tensor]:
    """Samples x = g(z, c) and their exact log-density log p_theta(x | c), by change of variables.

    log p_theta(x) = log N(z; 0, I) - log |det dg/dz| is exact when g is one to one, as the reference's
    probability-flow map and small corrections of it are (a fold would show as a Jacobian determinant of either
    sign). Samples where it folds (determinant <= 0) give NaN: there the density sums over several preimages, and
    no number would be honest.
    """
    shape = z.shape[1:]
    cond = torch.full((1,), caption)

    def one(flat: Tensor) -> Tensor:
        return generator(flat.reshape(1, *shape), cond).flatten()

    flat = z.flatten(1)
    # A generator that knows its own Jacobian (the analytic backend's) gives it; any other map gets autograd's.
    exact = getattr(generator, "jacobian", None)
    jacobians = exact(z, cond.expand(len(z))) if exact else vmap(jacfwd(one))(flat)
    sign, log_det = torch.linalg.slogdet(jacobians)
    log_det = torch.where(sign > 0, log_det, torch.nan)
    with torch.no_grad():
        x = generator(z, cond.expand(len(z)))
    log_noise = -0.5 * flat.pow(2).sum(1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)
    return x, (log_noise - log_det).detach()


def log_prob_clean(law: GaussianMixture, x: Tensor, caption: int) -> Tensor:
    """log law(x | c) of clean samples (t = 0)."""
    zero = torch.zeros(len(x), dtype=x.dtype)
    return law.log_prob(x, zero + 1, zero, torch.full((len(x),), caption))


def world_metrics(
    x: Tensor,
    cond: Tensor,
    reference: GaussianMixture,
    reward,
    optimum: GaussianMixture | None,
    generator: torch.Generator,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Everything the analytic world can say about samples x [N, C, H, W] drawn for captions `cond`.

    Returns the metrics averaged over captions and one row of metrics per caption (the per-prompt scores).
    Every caption has the same number of samples, so the averages are also the sample-wide means.
    """
    flat = x.flatten(1)
    dim = reference.dim
    zero = torch.zeros(len(cond))
    # A within-component pair sits at squared distance about 2 var D: the kernel sees mode weights and shifts.
    bandwidth2 = 2 * reference.var * dim
    rewards = reward(x, cond)
    nll = -reference.log_prob(flat, zero + 1, zero, cond) / dim
    nearest = torch.cdist(flat.unsqueeze(1), reference.means[cond]).squeeze(1).min(1).values.pow(2)
    # chi-square(D) tail at three standard deviations: 99.9% of true reference samples count as precise.
    precise = (nearest <= reference.var * (dim + 3 * math.sqrt(2 * dim))).float()
    rows = []
    for caption in cond.unique().tolist():
        pick = cond == caption
        xs = flat[pick]
        moments = sample_moments(xs)
        counts = torch.bincount(reference.assign(xs, cond[pick]), minlength=reference.means.shape[1])
        expected = pick.sum() * reference.log_weights[caption].exp()
        row = {
            "caption": caption,
            "reward": float(rewards[pick].mean()),
            "nll_ref": float(nll[pick].mean()),
            "precision": float(precise[pick].mean()),
            "coverage": float((counts >= 0.25 * expected).float().mean()),
            "fd_ref": frechet_distance(*moments, *reference.moments(caption)),
            "mmd_ref": mmd2(xs, reference.sample(cond[pick], generator), bandwidth2),
        }
        if optimum is not None:
            row["fd_star"] = frechet_distance(*moments, *optimum.moments(caption))
            row["mmd_star"] = mmd2(xs, optimum.sample(cond[pick], generator), bandwidth2)
        rows.append(row)
    metrics = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0] if key != "caption"}
    return metrics, rows


def optimum_summary(optimum: GaussianMixture, reference: GaussianMixture, reward, cond: Tensor,
                    generator: torch.Generator) -> dict[str, float]:
    """What the closed-form optimum p* itself scores: the target a method's numbers are read against."""
    x = optimum.sample(cond, generator)
    zero = torch.zeros(len(cond))
    log_ref = reference.log_prob(x, zero + 1, zero, cond)
    return {
        "reward": float(reward(x, cond).mean()),
        "nll_ref": float((-log_ref / reference.dim).mean()),
        "kl_ref": float((optimum.log_prob(x, zero + 1, zero, cond) - log_ref).mean()),
    }


def optimum_curve(reference: GaussianMixture, reward, form: tuple, cond: Tensor,
                  generator: torch.Generator) -> list[dict]:
    """(alpha_rew, reward, KL to the reference) of p*_alpha over OPTIMUM_CURVE, from exact densities.

    p*_alpha maximises E[r] - KL(q || p_ref) / alpha, so no law reaches more reward at the same KL: the curve
    is the frontier every method's points lie on or below.
    """
    return [{"alpha_rew": alpha, **{key: value for key, value in optimum_summary(
        reference.tilt(*form, alpha), reference, reward, cond, generator).items() if key != "nll_ref"}}
        for alpha in OPTIMUM_CURVE]
