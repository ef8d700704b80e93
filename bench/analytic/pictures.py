"""Procedural pictures of the analytic world's captions: the mixture components' means.

A caption names a colour and a shape ("a red circle"); its components draw that shape at different places
and sizes, so components of one caption share their colour content and differ in layout.
"""

from __future__ import annotations

import torch
from torch import Tensor

COLOURS = {
    "red": (1.0, -1.0, -1.0),
    "green": (-1.0, 1.0, -1.0),
    "blue": (-1.0, -1.0, 1.0),
    "yellow": (1.0, 1.0, -1.0),
}
SHAPES = ("circle", "square", "ring", "bar")
BACKGROUND = -0.8
# (centre x, centre y, radius) in units of the image side: one per mixture component.
LAYOUTS = (
    (0.32, 0.32, 0.22), (0.68, 0.68, 0.22), (0.68, 0.32, 0.22), (0.32, 0.68, 0.22),
    (0.50, 0.50, 0.30), (0.50, 0.30, 0.18), (0.30, 0.50, 0.18), (0.70, 0.50, 0.18),
)
SUPERSAMPLE = 4


def captions(count: int) -> list[str]:
    """The first `count` captions, ordered so that any prefix mixes colours and shapes."""
    colours, shapes = list(COLOURS), SHAPES
    pairs = [(colours[i % 4], shapes[(i + i // 4) % 4]) for i in range(16)]
    return [f"a {colour} {shape}" for colour, shape in pairs[:count]]


def _mask(shape: str, cx: float, cy: float, r: float, size: int) -> Tensor:
    n = size * SUPERSAMPLE
    coords = (torch.arange(n) + 0.5) / n
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    dx, dy = x - cx, y - cy
    if shape == "circle":
        inside = dx**2 + dy**2 <= r**2
    elif shape == "square":
        inside = (dx.abs() <= r * 0.85) & (dy.abs() <= r * 0.85)
    elif shape == "ring":
        d2 = dx**2 + dy**2
        inside = (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    else:
        inside = (dx.abs() <= r * 1.1) & (dy.abs() <= r * 0.4)
    # Anti-aliasing by area: edges take fractional coverage, as a rendered picture would.
    return torch.nn.functional.avg_pool2d(inside.float()[None, None], SUPERSAMPLE)[0, 0]


def render(caption: str, component: int, size: int) -> Tensor:
    """The mean picture of one component, 3 x size x size in [-1, 1]."""
    _, colour, shape = caption.split(" ")
    cx, cy, r = LAYOUTS[component % len(LAYOUTS)]
    mask = _mask(shape, cx, cy, r, size)
    rgb = torch.tensor(COLOURS[colour]).reshape(3, 1, 1)
    return BACKGROUND + mask * (rgb - BACKGROUND)


def as_latents(pictures: Tensor, channels: int) -> Tensor:
    """Pictures [..., 3, H, W] as `channels`-channel latents: red, green and blue, then their mean in each channel
    beyond three (a taught world's latents are pictures a VAE-free eye can read)."""
    extra = pictures.mean(-3, keepdim=True).expand(*pictures.shape[:-3], channels - 3, *pictures.shape[-2:])
    return torch.cat([pictures, extra], -3)


def component_means(texts: list[str], components: int, size: int) -> Tensor:
    """[P, M, 3 * size * size] means for the mixture."""
    return torch.stack(
        [torch.stack([render(text, m, size).flatten() for m in range(components)]) for text in texts]
    )
