"""Closed-form rewards of the analytic world.

Linear and quadratic rewards expose `quadratic_form()` = (q, b) with r(x) = -q |x|^2 + b . x + const, which
is all the world needs to write the KL-optimal aligned law p* in closed form.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bench.analytic.pictures import render


class LinearReward:
    """Redness: r(x) = w . x with w the unit direction that raises red and lowers green and blue."""

    name, version = "linear", "1"

    def __init__(self, size: int):
        w = torch.tensor([1.0, -0.5, -0.5]).reshape(3, 1, 1).expand(3, size, size).flatten()
        self.w = w / w.norm()

    def __call__(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return x.flatten(1) @ self.w

    def quadratic_form(self) -> tuple[float, Tensor]:
        return 0.0, self.w


class QuadraticReward:
    """Pull towards a target picture (a large yellow circle): r(x) = -|x - x*|^2 / 2."""

    name, version = "quadratic", "1"

    def __init__(self, size: int):
        self.target = render("a yellow circle", 4, size).flatten()

    def __call__(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return -0.5 * (x.flatten(1) - self.target).pow(2).sum(1)

    def quadratic_form(self) -> tuple[float, Tensor]:
        return 0.5, self.target


class ColorfulnessReward:
    """Hasler-Suesstrunk colourfulness (x10) of the picture: not quadratic, so p* has no closed form."""

    name, version = "colorfulness", "1"

    def __init__(self, size: int):
        self.size = size

    def __call__(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        rgb = (x.reshape(x.shape[0], 3, -1) + 1) / 2
        rg = rgb[:, 0] - rgb[:, 1]
        yb = 0.5 * (rgb[:, 0] + rgb[:, 1]) - rgb[:, 2]
        # The small constant keeps the gradient of the standard deviation finite on flat pictures.
        spread = torch.sqrt(rg.var(1) + yb.var(1) + 1e-6)
        centre = torch.sqrt(rg.mean(1) ** 2 + yb.mean(1) ** 2 + 1e-6)
        return 10 * (spread + 0.3 * centre)

    def quadratic_form(self) -> None:
        return None


ANALYTIC_REWARDS = {cls.name: cls for cls in (LinearReward, QuadraticReward, ColorfulnessReward)}
