"""Shared diffusion mathematics used by every method and backend.

Conventions: data x0, noisy x_t = alpha_t x0 + sigma_t eps on any Gaussian path, scores s(x_t) = grad log p_t(x_t),
networks predict eps, and s = -eps / sigma_t. Two paths are instances: variance preserving (VP, alpha_t^2 + sigma_t^2
= 1: DDPM, SD1.5, SDXL, PixArt) and flow matching (alpha_t = 1 - s_t, sigma_t = s_t: SD3, rectified flow). Tweedie,
DSM, the time weightings, the methods' estimators and the samplers below read only alpha_t and sigma_t, so they hold
on either; a schedule is anything with `alpha_sigma(t)`, and an ODE sampler's schedule also `time_of_log_snr` and
`ode_times`. Classifier-free guidance is written the way diffusers writes it, s~ = s_u + w (s_c - s_u): w = 1 is the
conditional score, w = 0 the unconditional one. Papers that write s_c + w' (s_c - s_u) (DI*, DI++) mean w = w' + 1.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

TIME_DISTRIBUTIONS = ("uniform", "point")
WEIGHTINGS = ("uniform", "denoiser")


@dataclass(frozen=True)
class VPSchedule:
    """Continuous VP schedule with linear beta(t) (Song et al., 2021): log alpha_t = -1/2 int_0^t beta."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    # Where its sampler starts, reading x_t as unit noise (alpha_1 = 0.007), and ends.
    ode_times: ClassVar[tuple[float, float]] = (1.0, 1e-3)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        log_alpha = -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        # expm1 keeps sigma accurate at small t, where 1 - alpha^2 would cancel.
        return log_alpha.exp(), torch.sqrt(-torch.expm1(2 * log_alpha))

    def time_of_log_snr(self, log_snr: float) -> float:
        """The t at which log(alpha_t / sigma_t) = log_snr: the root of the quadratic log alpha_t."""
        log_alpha = -0.5 * math.log1p(math.exp(-2 * log_snr))
        a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
        return (-b + math.sqrt(b * b - 4 * a * log_alpha)) / (2 * a)


def log_snr(schedule, t: float) -> float:
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
    return math.log(alpha / sigma)


VP_ODE_LOG_SNR = tuple(log_snr(VPSchedule(), t) for t in VPSchedule.ode_times)


@dataclass(frozen=True)
class FlowSchedule:
    """Flow matching's straight path x_t = (1 - s) x0 + s eps (Lipman et al., 2023; Esser et al., 2024), with SD3's
    timestep shift s = shift t / (1 + (shift - 1) t), which spends more of [0, 1] at high noise when shift > 1.
    A pretrained flow model reads the noise level as the timestep s * train_steps (its scheduler's
    num_train_timesteps), a continuous value, since flow models are trained at continuous s."""

    shift: float = 1.0
    train_steps: int = 1000

    @property
    def ode_times(self) -> tuple[float, float]:
        """Where its sampler starts and ends: at the VP sampler's log-SNRs (alpha is 0 at t = 1 itself, an infinite
        log-SNR; and at equal step counts a wider range costs accuracy: 1.7 nats of exact KL where VP's is 0.11)."""
        return self.time_of_log_snr(VP_ODE_LOG_SNR[0]), self.time_of_log_snr(VP_ODE_LOG_SNR[1])

    def noise_fraction(self, t: Tensor) -> Tensor:
        return self.shift * t / (1 + (self.shift - 1) * t)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        s = self.noise_fraction(t)
        return 1 - s, s

    def timestep(self, t: Tensor) -> Tensor:
        return self.noise_fraction(t) * self.train_steps

    def at_timestep(self, timestep: int) -> tuple[float, float]:
        """alpha, sigma at one of the model's own timesteps (already shifted: s = timestep / train_steps)."""
        s = timestep / self.train_steps
        return 1 - s, s

    def time_of_timestep(self, timestep: float) -> float:
        """The t whose timestep is `timestep`: the shift undone from s = timestep / train_steps."""
        s = timestep / self.train_steps
        return s / (self.shift - (self.shift - 1) * s)

    def time_of_log_snr(self, log_snr: float) -> float:
        """log((1 - s) / s) = log_snr at s = 1 / (1 + e^log_snr); then the shift undone."""
        return self.time_of_timestep(self.train_steps / (1 + math.exp(log_snr)))


def probability_flow(denoise: Callable[[Tensor, float, float], Tensor], noise: Tensor, schedule,
                     steps: int) -> Tensor:
    """x0 from unit noise along the probability-flow ODE of `denoise(x, alpha, sigma)`: DPM-Solver++ (2M).

    Steps are uniform in log-SNR; the multistep correction makes it second order at one denoiser call a step,
    and the last call returns the denoiser's x0 at the grid's end. For an exact denoiser this is the reference's own
    sampler, a deterministic map from noise to data: what a distilled one-step model tries to be. Every sample
    shares the time, so `denoise` is given alpha and sigma as numbers.
    """
    grid = solver_grid(schedule, steps, *schedule.ode_times)
    # x_T ~ sigma_T eps: the alpha_T x0 part (below 1% there) is what the sampler cannot know. VP's sigma_T is
    # 0.99998, flow matching's at the same log-SNR 0.993, which read as 1 cost it 0.04 nats.
    x, previous = noise * grid[0][1], None
    for (alpha, sigma, log_snr), (alpha_next, sigma_next, log_snr_next) in itertools.pairwise(grid):
        x0 = denoise(x, alpha, sigma)
        h = log_snr_next - log_snr
        guess = x0
        if previous is not None:
            ratio = previous[1] / h
            guess = torch.add(x0 * (1 + 1 / (2 * ratio)), previous[0], alpha=-1 / (2 * ratio))
        x = torch.add(x * (sigma_next / sigma), guess, alpha=alpha_next * -math.expm1(-h))
        previous = (x0, h)
    return denoise(x, *grid[-1][:2])


@functools.lru_cache(maxsize=16)
def solver_grid(schedule, steps: int, t_max: float, t_min: float) -> tuple[tuple[float, float, float], ...]:
    """(alpha, sigma, log-SNR) at the solver's times, uniform in log-SNR: computed once, not at every call."""
    def at(t: float) -> tuple[float, float, float]:
        alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
        return alpha, sigma, math.log(alpha / sigma)

    first, last = at(t_max)[2], at(t_min)[2]
    return tuple(at(schedule.time_of_log_snr(first + (last - first) * i / steps)) for i in range(steps + 1))


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

    def at_timestep(self, timestep: int) -> tuple[float, float]:
        alpha_bar = self.alphas_cumprod[timestep]
        return float(alpha_bar.sqrt()), float((1 - alpha_bar).sqrt())

    def time_of_timestep(self, timestep: int) -> float:
        """The t that rounds to `timestep`."""
        return timestep / (len(self.alphas_cumprod) - 1)


def noised(schedule, x0: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """alpha_t, sigma_t of `schedule` (VP, flow matching or a model's own timesteps) and x_t = alpha_t x0 + sigma_t
    eps."""
    alpha, sigma = schedule.alpha_sigma(t)
    return alpha, sigma, broadcast(alpha, x0) * x0 + broadcast(sigma, x0) * eps


def ddim_denoise(score_at: Callable[[Tensor, Tensor], Tensor], noise_level: Callable[[Tensor], tuple[Tensor, Tensor]],
                 x: Tensor, t: Tensor, steps: int) -> Tensor:
    """x0 from x = x_t by `steps` deterministic DDIM steps at times t (1 - i / steps), each sample from its own t.

    Each step reads x0 from the score by Tweedie, keeps the implied noise eps = -sigma s, and re-noises to the
    next time; the last step's x0 is the answer. As steps grow this is the probability-flow ODE's endpoint, a
    deterministic function of x_t through which gradients flow (a reward of it is differentiable in x_t).
    """
    for i in range(steps):
        t_now = t * (1 - i / steps)
        alpha, sigma = (broadcast(v, x) for v in noise_level(t_now))
        score = score_at(x, t_now)
        x0 = (x + sigma**2 * score) / alpha
        if i == steps - 1:
            return x0
        alpha_next, sigma_next = (broadcast(v, x) for v in noise_level(t * (1 - (i + 1) / steps)))
        x = alpha_next * x0 - sigma_next * sigma * score
    raise ValueError(f"steps must be at least 1, got {steps}")


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
    """w(t) in the time-integrated divergence int w(t) D(p_theta,t, p~_ref,t) dt.

    'uniform' (w = 1) is the plain integral, and at a single small t the data-level KL that KL-RLHF needs.
    'denoiser' (w = sigma^2 / alpha^2) makes the IKL gradient with respect to x0, alpha w (s_fake - s_ref),
    the difference of the two denoisers D_fake - D_ref: the x0-space gradient of DMD (Yin et al., 2024), which
    stays O(1) at every noise level.
    """
    if kind == "uniform":
        return torch.ones_like(alpha)
    if kind == "denoiser":
        return sigma**2 / alpha**2
    raise ValueError(f"unknown time weighting '{kind}'; choose from {', '.join(WEIGHTINGS)}")


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
