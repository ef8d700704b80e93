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

from bench.diffusion import TIME_DISTRIBUTIONS, WEIGHTINGS, guided, inner, sample_times, time_weight
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
    alpha: Tensor
    sigma: Tensor
    weight: Tensor
    fake_score: Callable[[Tensor], Tensor]
    ref_cond: Callable[[Tensor], Tensor]
    ref_uncond: Callable[[Tensor], Tensor]
    reward: Callable[[Tensor], Tensor]
    logs: dict[str, Tensor] = field(default_factory=dict)

    def ref_score(self, x: Tensor, scale: float) -> Tensor:
        """The CFG-guided reference score s_u + scale (s_c - s_u); the unconditional model runs only when it
        matters."""
        return guided(self.ref_cond(x), None if scale == 1 else self.ref_uncond(x), scale)

    def denoised(self, x: Tensor, scale: float) -> Tensor:
        """E[x0 | x_t = x] under the guided reference (Tweedie): (x + sigma^2 s~_ref(x)) / alpha."""
        return (x + self.sigma**2 * self.ref_score(x, scale)) / self.alpha

    @functools.cached_property
    def reward_x0(self) -> Tensor:
        """r(x0), computed once: the default reward term, and what the trainer logs as the reward."""
        return self.reward(self.x0)


def ikl_surrogate(b: GeneratorBatch, scale: float) -> Tensor:
    """w(t) <sg[s_fake - s~_ref], x_t>: its gradient is the Integral-KL gradient E[w (s_theta - s~_ref)^T dx_t].

    No backpropagation through either score network, which is what makes DI++ and KL-RLHF cheap.
    """
    with torch.no_grad():
        gap = b.fake_score(b.x_t) - b.ref_score(b.x_t, scale)
        b.logs["div"] = (b.sigma**2 * gap**2).flatten(1).mean(1).mean()
    return b.weight * inner(gap, b.x_t)


@dataclass
class Method:
    """Base of every method: the hyperparameters all methods share, and the time distribution."""

    name: ClassVar[str] = "method"

    alpha_rew: float = param(1.0, "reward weight alpha_rew", ge=0)
    alpha_cfg: float = param(1.0, "CFG scale w in s_u + w (s_c - s_u): 1 conditional, 0 unconditional "
                             "(a paper's s_c + w' (s_c - s_u) is w = w' + 1)", ge=0)
    fake_steps: int = param(1, "fake-score (DSM) updates per generator update", ge=1, le=100)
    time: str = param("uniform", "distribution of diffusion times", choices=TIME_DISTRIBUTIONS)
    t_min: float = param(0.02, "smallest diffusion time (0.02 and 0.98: DMD2's timesteps 20 to 980 of 1000)",
                         gt=0, lt=1)
    t_max: float = param(0.98, "largest diffusion time", gt=0, lt=1)
    weighting: str = param("denoiser", "time weighting w(t) of the divergence: uniform (w = 1) or denoiser "
                           "(sigma^2/alpha^2: DMD's x0-space gradient D_fake - D_ref, Yin et al. 2024)",
                           choices=WEIGHTINGS)

    def validate(self) -> None:
        if self.time == "uniform" and self.t_min >= self.t_max:
            raise UsageError(
                f"method.t_min ({self.t_min}) must be below method.t_max ({self.t_max}); "
                "for a single time use method.time=point"
            )

    def sample_t(self, n: int, generator: torch.Generator) -> Tensor:
        return sample_times(n, self.time, self.t_min, self.t_max, generator)

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
