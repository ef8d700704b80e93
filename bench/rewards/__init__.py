"""Rewards: the analytic world's closed-form ones and the image scorers that papers report.

Analytic rewards score a world sample: `reward(x, cond) -> Tensor[B]`. Image scorers score pictures and their
prompts: `scorer(images in [0, 1], prompts) -> Tensor[B]`, differentiably (see `bench.rewards.scorer`). A
training reward is one name or a weighted combination, `reward={hpsv2: 1.0, image_reward: 0.5}`.
"""

from __future__ import annotations

import importlib

import yaml

from bench.errors import UsageError, did_you_mean

# name -> 'module:Class', imported on use so that `bench --help` does not load transformers.
SCORERS = {
    "hpsv2": "bench.rewards.clip:HPSv2",
    "hpsv2.1": "bench.rewards.clip:HPSv21",
    "image_reward": "bench.rewards.image_reward:ImageReward",
    "aesthetic": "bench.rewards.clip:Aesthetic",
    "pickscore": "bench.rewards.clip:PickScore",
    "clip_score": "bench.rewards.clip:ClipScore",
}


def load_scorer(name: str, weights: str | None = None):
    """The scorer `name` with its weights from `weights`/NAME/, BENCH_WEIGHTS/NAME/ or the hub cache."""
    if name not in SCORERS:
        raise UsageError(f"unknown scorer '{name}'{did_you_mean(name, SCORERS)}")
    module, _, attr = SCORERS[name].partition(":")
    return getattr(importlib.import_module(module), attr).load(weights)


def parse_reward(text: str, known) -> dict[str, float]:
    """'linear' or '{hpsv2: 1.0, image_reward: 0.5}' -> {name: weight}, with a message naming what is wrong."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    terms = {value: 1.0} if isinstance(value, str) else value
    if not isinstance(terms, dict) or not terms:
        raise UsageError(f"reward expects a name or a mapping of names to weights such as "
                         f"reward={{hpsv2: 1.0, image_reward: 0.5}}, got '{text}'")
    for name, weight in terms.items():
        if name not in known:
            raise UsageError(f"reward '{name}' is not known{did_you_mean(str(name), known)}")
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise UsageError(f"reward weight of {name} must be a number, got '{weight}'")
    return {name: float(weight) for name, weight in terms.items()}


def reward_text(terms: dict[str, float]) -> str:
    """The canonical spelling stored with a run: a bare name for a single weight-1 reward."""
    if len(terms) == 1 and next(iter(terms.values())) == 1.0:
        return next(iter(terms))
    return "{" + ", ".join(f"{name}: {weight:g}" for name, weight in terms.items()) + "}"
