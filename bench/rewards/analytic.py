"""Closed-form rewards of an exact world, on its pictures (3 channels) or a taught world's latents (as_latents).

Linear and quadratic rewards expose `quadratic_form()` = (q, b) with r(x) = -q |x|^2 + b . x + const, which
is all the world needs to write the KL-optimal aligned law p* in closed form.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.analytic.pictures import as_latents, render


class LinearReward(nn.Module):
    """Redness: r(x) = w . x with w the unit direction that raises red and lowers green and blue (and leaves any
    further latent channel alone)."""

    name, version = "linear", "1"

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        channels, height, width = shape
        w = torch.tensor([1.0, -0.5, -0.5, *[0.0] * (channels - 3)]).reshape(channels, 1, 1)
        w = w.expand(channels, height, width).flatten()
        self.w = w / w.norm()

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return x.flatten(1) @ self.w

    def quadratic_form(self) -> tuple[float, Tensor]:
        return 0.0, self.w


class QuadraticReward(nn.Module):
    """Pull towards a target picture (a large yellow circle): r(x) = -|x - x*|^2 / 2."""

    name, version = "quadratic", "1"

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.target = as_latents(render("a yellow circle", 4, shape[-1]), shape[0]).flatten()

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return -0.5 * (x.flatten(1) - self.target).pow(2).sum(1)

    def quadratic_form(self) -> tuple[float, Tensor]:
        return 0.5, self.target


class ColorfulnessReward(nn.Module):
    """Hasler-Suesstrunk colourfulness (x10) of the picture (a latent's first three channels): not quadratic, so p*
    has no closed form."""

    name, version = "colorfulness", "1"

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.channels = shape[0]

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        rgb = (x.reshape(x.shape[0], self.channels, -1)[:, :3] + 1) / 2
        rg = rgb[:, 0] - rgb[:, 1]
        yb = 0.5 * (rgb[:, 0] + rgb[:, 1]) - rgb[:, 2]
        # The small constant keeps the gradient of the standard deviation finite on flat pictures.
        spread = torch.sqrt(rg.var(1) + yb.var(1) + 1e-6)
        centre = torch.sqrt(rg.mean(1) ** 2 + yb.mean(1) ** 2 + 1e-6)
        return 10 * (spread + 0.3 * centre)

    def quadratic_form(self) -> None:
        return None


ANALYTIC_REWARDS = {cls.name: cls for cls in (LinearReward, QuadraticReward, ColorfulnessReward)}


class OnPictures(nn.Module):
    """An image scorer as a reward of the analytic world: pictures in [-1, 1] -> [0, 1], caption ids -> text."""

    def __init__(self, scorer: nn.Module, captions: list[str], size: int):
        super().__init__()
        self.scorer, self.captions, self.size = scorer, captions, size
        self.name, self.version = scorer.name, scorer.version

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        images = (x.reshape(len(x), 3, self.size, self.size) + 1) / 2
        return self.scorer(images, [self.captions[int(c)] for c in cond])


def build_reward(spec: str, captions: list[str], shape: tuple[int, int, int], weights: str | None):
    """The configured reward of an exact world: one analytic reward, or a weighted sum with image scorers (which
    read the analytic world's pictures)."""
    from bench.rewards import SCORERS, load_scorer, parse_reward
    from bench.rewards.scorer import WeightedReward

    terms = parse_reward(spec, (*ANALYTIC_REWARDS, *SCORERS))
    if spec in ANALYTIC_REWARDS:
        return ANALYTIC_REWARDS[spec](shape)
    parts = {name: (term, ANALYTIC_REWARDS[name](shape) if name in ANALYTIC_REWARDS
                    else OnPictures(load_scorer(name, weights), captions, shape[-1])) for name, term in terms.items()}
    return WeightedReward(spec, parts)
