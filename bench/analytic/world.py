"""An exact world: a Gaussian-mixture reference over some space, its captions, a reward, and the reward's optimum.

The analytic backend's pixels are such a world, and so are the latents of a taught pipeline (`bench teach`): a
real family's denoiser trained on a mixture whose law is known, so that what a method makes of it is scored
against exact answers. A taught folder carries its world in `world.safetensors`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from bench.analytic.metrics import optimum_curve, optimum_summary, world_metrics
from bench.analytic.mixture import GaussianMixture
from bench.analytic.pictures import as_latents, captions, component_means

WORLD_FILE = "world.safetensors"


class ExactWorld:
    """The reference law of each caption, and the samples' metrics against it, and against p* where the reward is
    linear or quadratic (its `form`, see rewards.analytic): the optimum of KL-RLHF at alpha_rew = `temperature`.

    `reward(x, cond)` scores samples for caption ids: an analytic reward, or a taught pipeline's (which may decode
    latents and score the pictures)."""

    def __init__(self, reference: GaussianMixture, texts: list[str], reward, form, temperature: float):
        self.reference, self.captions, self.reward, self.form = reference, texts, reward, form
        self.optimum = None if form is None else reference.tilt(*form, temperature)

    def eval_captions(self, total: int) -> Tensor:
        """Caption ids of an evaluation of `total` samples: every caption alike (at least two each, for a spread),
        image i of caption i // per_caption."""
        return torch.arange(len(self.captions)).repeat_interleave(max(2, total // len(self.captions)))

    def metrics(self, x: Tensor, cond: Tensor, seed: int) -> tuple[dict[str, float], list[dict]]:
        """Metrics averaged over captions, and one row per caption (named)."""
        rng = torch.Generator().manual_seed(seed + 1)
        metrics, rows = world_metrics(x, cond, self.reference, self.reward, self.optimum, rng)
        return metrics, [{**row, "caption": self.captions[row["caption"]]} for row in rows]

    @torch.no_grad()
    def describe_optimum(self, cond: Tensor, seed: int) -> dict[str, float] | None:
        if self.optimum is None:
            return None
        rng = torch.Generator().manual_seed(seed + 2)
        summary = optimum_summary(self.optimum, self.reference, self.reward, cond, rng)
        return {**summary, "curve": optimum_curve(self.reference, self.reward, self.form, cond, rng)}


def picture_mixture(prompts: int, components: int, side: int, channels: int, s0: float, skew: float = 0.0):
    """The world's captions and their mixture: each caption's components are pictures of it (pictures.py), in
    `channels` channels (as_latents), with standard deviation s0; weights fall off as exp(-skew * rank)."""
    texts = captions(prompts)
    means = as_latents(component_means(texts, components, side).reshape(prompts, components, 3, side, side),
                       channels).flatten(2)
    rank = (torch.arange(components)[None] + torch.arange(prompts)[:, None]) % components
    return texts, GaussianMixture(means, torch.log_softmax(-skew * rank.float(), 1), s0**2)


def save_mixture(folder: Path, texts: list[str], mixture: GaussianMixture, shape: tuple[int, ...]) -> None:
    from safetensors.torch import save_file

    meta = {"captions": json.dumps(texts), "var": repr(mixture.var), "shape": json.dumps(list(shape))}
    save_file({"means": mixture.means.contiguous(), "log_weights": mixture.log_weights.contiguous()},
              str(folder / WORLD_FILE), metadata=meta)


def load_mixture(folder: Path) -> tuple[list[str], GaussianMixture, tuple[int, ...]] | None:
    """A taught folder's captions, mixture and latent shape; None for a folder without a world (a real model)."""
    from safetensors import safe_open

    path = folder / WORLD_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        mixture = GaussianMixture(f.get_tensor("means"), f.get_tensor("log_weights"), float(meta["var"]))
    return json.loads(meta["captions"]), mixture, tuple(json.loads(meta["shape"]))
