"""Shared diffusion mathematics used by every method and backend.

Conventions: data x0, noisy x_t = alpha_t x0 + sigma_t eps with alpha_t^2 + sigma_t^2 = 1 (VP), scores
s(x_t) = grad log p_t(x_t), networks predict eps, and s = -eps / sigma_t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

TIME_DISTRIBUTIONS = ("uniform", "point")
WEIGHTINGS = ("uniform", "denoiser")


@dataclass(frozen=True)
class VPSchedule:
    """Continuous VP schedule with linear beta(t) (Song et al., 2021): log alpha_t = -1/2 int_0^t beta."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        log_alpha = -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        # expm1 keeps sigma accurate at small t, where 1 - alpha^2 would cancel.
        return log_alpha.exp(), torch.sqrt(-torch.expm1(2 * log_alpha))


class DiscreteSchedule:
    """A pretrained model's own noise levels: its scheduler's alphas_cumprod, indexed by integer timestep.

    Continuous times t in [0, 1] map to timestep round(t (T - 1)), so every x_t is a noise level the reference
    was trained at, and alpha_t, sigma_t are exactly the ones its eps-prediction assumes.
    """

    def __init__(self, alphas_cumprod: Tensor, device: torch.device | str = "cpu"):
        self.alphas_cumprod = alphas_cumprod.to(device, torch.float32)

    def timestep(self, t: Tensor) -> Tensor:
        return (t * (len(self.alphas_cumprod) - 1)).round().long()

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha_bar = self.alphas_cumprod[self.timestep(t).to(self.alphas_cumprod.device)]
        return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def noise_generator(seed: int, index: int) -> torch.Generator:
    """The random stream of evaluation image `index`: fixed by (seed, index) alone, whatever the batching.

    A generator per image costs about 10 us, negligible beside the evaluation itself.
    """
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def image_noise(shape: tuple[int, ...], seed: int, index: int) -> Tensor:
    return torch.randn(shape, generator=noise_generator(seed, index))


def sample_times(n: int, kind: str, t_min: float, t_max: float, generator: torch.Generator) -> Tensor:
    """Diffusion times for a batch. 'point' puts every sample at t_min: a data-level divergence."""
    if kind == "point":
        return torch.full((n,), t_min)
    return t_min + (t_max - t_min) * torch.rand(n, generator=generator)


def time_weight(kind: str, alpha: Tensor, sigma: Tensor) -> Tensor:
    """w(t) in the time-integrated divergence.

    'denoiser' is sigma^2 / alpha^2: then the IKL gradient with respect to x0, alpha w (s_fake - s_ref), equals
    the difference of the two denoisers D_fake - D_ref, which stays O(1) at every noise level.
    """
    if kind == "uniform":
        return torch.ones_like(alpha)
    return sigma**2 / alpha**2


def guided(cond: Tensor, uncond: Tensor | None, scale: float) -> Tensor:
    """Classifier-free guidance in score space: s_u + scale (s_c - s_u); scale 1 is the conditional score."""
    if uncond is None:
        return cond
    return uncond + scale * (cond - uncond)


def dsm_loss(eps_pred: Tensor, eps: Tensor) -> Tensor:
    """Denoising score matching in eps-space, per sample: its minimiser is the score of the generator's law."""
    return (eps_pred - eps).pow(2).flatten(1).mean(1)


def inner(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product of two batches of images."""
    return (a * b).flatten(1).sum(1)


def broadcast(v: Tensor, like: Tensor) -> Tensor:
    """Per-sample scalars shaped to multiply a batch of images."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))
