"""What every image scorer shares: frozen weights, preprocessing inside the autograd graph, and provenance.

A scorer maps images (B, 3, H, W) with values in [0, 1] and their prompts to scores (B,). The same module is
a training reward (gradients reach the pixels) and, under `score()`, a batch scorer for evaluation. Resizing
uses bicubic interpolation with antialiasing, torch's counterpart of the PIL resize the reference code runs
on files; `benchmarks/reference_parity.py` measures how far the two are apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# OpenAI CLIP's normalisation, also used by BLIP (ImageReward), HPSv2 and PickScore.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageScorer(nn.Module):
    name: str
    version: str

    def __init__(self, files: dict[str, str]):
        super().__init__()
        self.files = files  # file name -> sha256 of the weights this scorer was built from

    def freeze(self) -> ImageScorer:
        self.requires_grad_(False)
        return self.eval()

    @property
    def info(self) -> dict:
        return {"name": self.name, "version": self.version, "weights_sha256": self.files}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        return self(images, prompts).float().cpu()


def resize_shorter(images: Tensor, size: int) -> Tensor:
    height, width = images.shape[-2:]
    scale = size / min(height, width)
    new = (max(size, round(height * scale)), max(size, round(width * scale)))
    return F.interpolate(images, size=new, mode="bicubic", antialias=True, align_corners=False)


def center_crop(images: Tensor, size: int) -> Tensor:
    height, width = images.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return images[..., top:top + size, left:left + size]


def resize_crop(images: Tensor, size: int) -> Tensor:
    """Shorter side to `size`, then the centre square: the CLIP and BLIP evaluation transform."""
    return center_crop(resize_shorter(images, size), size)


def resize_pad(images: Tensor, size: int) -> Tensor:
    """Longer side to `size`, then zero padding (black) to a centred square: HPSv2's transform."""
    height, width = images.shape[-2:]
    scale = size / max(height, width)
    new = (round(height * scale), round(width * scale))
    images = F.interpolate(images, size=new, mode="bicubic", antialias=True, align_corners=False)
    pad_h, pad_w = size - new[0], size - new[1]
    return F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


def normalise(images: Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> Tensor:
    mean = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


class WeightedReward(nn.Module):
    """sum_k w_k r_k(...): the training reward `reward={hpsv2: 1.0, image_reward: 0.5}`. A reward with a margin m
    enters as the hinge -relu(m - r_k) (DMDR): pulled up to its margin and no further.

    The parts share one call signature: (images, prompts) for image scorers, (x, cond) in the analytic world.
    """

    def __init__(self, name: str, parts: dict[str, tuple]):
        """`parts`: name -> (term, module), term a RewardTerm (weight, margin)."""
        super().__init__()
        self.name = name
        self.version = "+".join(f"{key}:{getattr(part, 'version', '?')}" for key, (_, part) in parts.items())
        self.terms = [term for term, _ in parts.values()]
        self.parts = nn.ModuleList(part for _, part in parts.values())

    def forward(self, *inputs) -> Tensor:
        total = 0
        for term, part in zip(self.terms, self.parts, strict=True):
            value = part(*inputs)
            if term.margin is not None:
                value = -F.relu(term.margin - value)
            total = total + term.weight * value
        return total

    def quadratic_form(self) -> None:
        return None  # a combination has no closed-form optimum in this suite
