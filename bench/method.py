"""The method seam: what an alignment method is, what it sees, and how it is found by name.

A method is a dataclass whose fields are its hyperparameters (settable as `method.KEY=VALUE`) and whose
`regulariser` turns one generator batch into a per-sample surrogate loss whose gradient is the gradient of its
divergence to the reference. The trainer adds the reward term, trains the fake score by denoising score
matching and owns everything else, so a method file holds only its mathematics.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import ClassVar

import torch
from torch import Tensor

from bench.diffusion import (
    TIME_DISTRIBUTIONS,
    WEIGHTINGS,
    ddim_denoise,
    guided,
    inner,
    sample_times,
    time_weight,
)
from bench.errors import UsageError, did_you_mean
from bench.fields import param

ENTRY_POINT_GROUP = "bench.methods"


@dataclass
class GeneratorBatch:
    """One generator update's sample, as a method sees it.

    x_t = alpha * x0 + sigma * eps carries the gradient to the generator. The score callables evaluate the
    networks at the batch's times and prompts with their parameters frozen; gradients flow only through
    their input. `reward(x)` scores clean samples for the batch's prompts, differentiably.
    """

    x0: Tensor
    x_t: Tensor
    eps: Tensor
    t: Tensor
    alpha: Tensor
    sigma: Tensor
    weight: Tensor
    cfg: float
    fake_score: Callable[[Tensor], Tensor]
    ref_cond: Callable[[Tensor], Tensor]
    ref_uncond: Callable[[Tensor], Tensor]
    ref_at: Callable[[Tensor, Tensor, bool], Tensor]
    noise_level: Callable[[Tensor], tuple[Tensor, Tensor]]
    reward: Callable[[Tensor], Tensor]
    logs: dict[str, Tensor] = field(default_factory=dict)

    def ref_score(self, x: Tensor, scale: float) -> Tensor:
        """The CFG-guided reference score s_u + scale (s_c - s_u) at the batch's times; the unconditional model runs
        only when it matters."""
        return guided(self.ref_cond(x), None if scale == 1 else self.ref_uncond(x), scale)

    def denoised(self, x: Tensor, scale: float, steps: int = 1) -> Tensor:
        """x0 from x_t = x under the guided reference: Tweedie's E[x0 | x_t] = (x + sigma^2 s~_ref(x)) / alpha in one
        step, or `steps` deterministic (DDIM) steps from the batch's times to 0, differentiable in x throughout."""
        if steps == 1:
            return (x + self.sigma**2 * self.ref_score(x, scale)) / self.alpha

        def guided_at(y: Tensor, t: Tensor) -> Tensor:
            return guided(self.ref_at(y, t, True), None if scale == 1 else self.ref_at(y, t, False), scale)

        return ddim_denoise(guided_at, self.noise_level, x, self.t, steps)

    @functools.cached_property
    def reward_x0(self) -> Tensor:
        """r(x0), computed once: the default reward term, and what the trainer logs as the reward."""
        return self.reward(self.x0)


def diffused_reward(b: GeneratorBatch, steps: int = 1) -> Tensor:
    """w(t) r(x0_hat(x_t)): the reward carried to x_t by a `steps`-step denoise through the guided reference, in the
    regulariser's units. Its x_t-gradient estimates the diffused reward score grad log E[exp(alpha_rew r(x0)) | x_t]
    / alpha_rew (exact for a linear reward where the reference is locally Gaussian; a reward's curvature c is seen
    as c instead of c / (1 + alpha_rew c v_t), v_t the posterior variance), so a KL at x_t to the reference plus
    this term is a KL at x_t to the tilted law p*, whose minimiser is p* itself."""
    return b.weight * b.reward(b.denoised(b.x_t, b.cfg, steps))


def score_gap(b: GeneratorBatch, scale: float) -> tuple[Tensor, Tensor]:
    """(s_fake - s~_ref, s~_ref) at x_t, without gradient; logs the gap's size in eps units as 'div'."""
    with torch.no_grad():
        ref = b.ref_score(b.x_t, scale)
        gap = b.fake_score(b.x_t) - ref
        b.logs["div"] = (b.sigma**2 * gap**2).flatten(1).mean(1).mean()
    return gap, ref


def ikl_surrogate(b: GeneratorBatch, scale: float) -> Tensor:
    """w(t) <sg[s_fake - s~_ref], x_t>: its gradient is the Integral-KL gradient E[w (s_theta - s~_ref)^T dx_t].

    No backpropagation through either score network, which is what makes DI++ and KL-RLHF cheap.
    """
    gap, _ = score_gap(b, scale)
    return b.weight * inner(gap, b.x_t)


@dataclass
class Method:
    """Base of every method: the hyperparameters all methods share, and the time distribution."""

    name: ClassVar[str] = "method"
    # Whether the method's optimum is the KL-optimal tilted law p* ~ p~_ref exp(alpha_rew r) that *_star metrics use.
    aims_at_p_star: ClassVar[bool] = False

    alpha_rew: float = param(1.0, "reward weight alpha_rew", ge=0)
    alpha_cfg: float = param(1.0, "CFG scale w in s_u + w (s_c - s_u): 1 conditional, 0 unconditional "
                             "(a paper's s_c + w' (s_c - s_u) is w = w' + 1)", ge=0)
    alpha_cfg_max: float = param(0.0, "with a value above alpha_cfg, each step draws its CFG scale uniformly from "
                                 "[alpha_cfg, alpha_cfg_max] (DMDR); 0 keeps alpha_cfg fixed", ge=0)
    cold_start: int = param(0, "generator steps before the reward term starts (DMDR's distillation stage)", ge=0)
    fake_steps: int = param(1, "fake-score (DSM) updates per generator update", ge=1, le=100)
    time: str = param("uniform", "distribution of diffusion times", choices=TIME_DISTRIBUTIONS)
    t_min: float = param(0.02, "smallest diffusion time (0.02 and 0.98: DMD2's timesteps 20 to 980 of 1000)",
                         gt=0, lt=1)
    t_max: float = param(0.98, "largest diffusion time", gt=0, lt=1)
    weighting: str = param("denoiser", "time weighting w(t) of the divergence: uniform (w = 1) or denoiser "
                           "(sigma^2/alpha^2: DMD's x0-space gradient D_fake - D_ref, Yin et al. 2024)",
                           choices=WEIGHTINGS)

    def validate(self) -> None:
        if self.alpha_cfg_max and self.alpha_cfg_max < self.alpha_cfg:
            raise UsageError(
                f"method.alpha_cfg_max ({self.alpha_cfg_max}) must be at least method.alpha_cfg ({self.alpha_cfg}): "
                "the scale is drawn from [alpha_cfg, alpha_cfg_max]; 0 turns the range off"
            )
        if self.time == "uniform" and self.t_min >= self.t_max:
            raise UsageError(
                f"method.t_min ({self.t_min}) must be below method.t_max ({self.t_max}); "
                "for a single time use method.time=point"
            )

    def sample_t(self, n: int, generator: torch.Generator) -> Tensor:
        return sample_times(n, self.time, self.t_min, self.t_max, generator)

    @property
    def cfg_drawn(self) -> bool:
        """Whether each step draws its guidance scale from [alpha_cfg, alpha_cfg_max]."""
        return self.alpha_cfg_max > self.alpha_cfg

    @property
    def guided(self) -> bool:
        """Whether the unconditional reference is read at all (a scale other than 1 at some step)."""
        return self.alpha_cfg != 1 or self.cfg_drawn

    def cfg_scale(self, generator: torch.Generator) -> float:
        """This step's guidance scale: alpha_cfg, or a uniform draw from [alpha_cfg, alpha_cfg_max]."""
        if not self.cfg_drawn:
            return self.alpha_cfg
        return self.alpha_cfg + (self.alpha_cfg_max - self.alpha_cfg) * float(torch.rand((), generator=generator))

    def reward_weight(self, step: int) -> float:
        """alpha_rew at generator step `step` (counted from 0): none during the cold start."""
        return 0.0 if step < self.cold_start else self.alpha_rew

    def weight(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        return time_weight(self.weighting, alpha, sigma).flatten()

    def regulariser(self, b: GeneratorBatch) -> Tensor:
        """Per-sample surrogate of the divergence; put a scalar estimate of it in b.logs['div']."""
        raise NotImplementedError

    def reward_term(self, b: GeneratorBatch) -> Tensor:
        """The per-sample reward that alpha_rew weighs against the regulariser: r(x0) unless a method's
        estimator places it elsewhere."""
        return b.reward_x0


def retune(name: str, default):
    """Re-declare a shared hyperparameter with a method's own default, keeping its help and range."""
    meta = {f.name: f for f in dataclasses.fields(Method)}[name].metadata
    return field(default=default, metadata=meta)


def available_methods() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def load_method(name: str) -> type[Method]:
    """A method class by registered name, or by 'module:Class' for a file not yet packaged."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise UsageError(f"cannot load method '{name}': {err}") from None
    else:
        found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        if name not in found:
            raise UsageError(f"unknown method '{name}'{did_you_mean(name, found)}")
        cls = found[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise UsageError(f"method '{name}' is not a subclass of bench.method.Method")
    cls.name = name  # the name it was asked for is the one stored with runs and resolved again on resume
    return cls
