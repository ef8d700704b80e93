"""Rewards: the analytic world's closed-form ones and the image scorers that papers report.

Analytic rewards score a world sample: `reward(x, cond) -> Tensor[B]`. Image scorers score pictures and their
prompts: `scorer(images in [0, 1], prompts) -> Tensor[B]`, differentiably (see `bench.rewards.scorer`). A
training reward is one name or a weighted combination, `reward={hpsv2: 1.0, image_reward: 0.5}`, where a reward
may carry DMDR's hinge margin, `{hpsv2.1: {weight: 1.0, margin: 0.3}}`.
"""

from __future__ import annotations

import importlib
import math
from typing import NamedTuple

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


class RewardTerm(NamedTuple):
    """One reward of a training objective: its weight and, for DMDR's hinge, its margin (None: no hinge)."""

    weight: float
    margin: float | None = None


def parse_reward(text: str, known) -> dict[str, RewardTerm]:
    """'linear', '{hpsv2: 1.0, image_reward: 0.5}' or '{hpsv2.1: {weight: 1, margin: 0.3}}' -> {name: term}, with a
    message naming what is wrong."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    terms = {value: 1.0} if isinstance(value, str) else value
    if not isinstance(terms, dict) or not terms:
        raise UsageError(f"reward expects a name or a mapping of names to weights such as "
                         f"reward={{hpsv2: 1.0, image_reward: 0.5}}, got '{text}'")
    parsed = {}
    for name, spec in terms.items():
        if name not in known:
            raise UsageError(f"reward '{name}' is not known{did_you_mean(str(name), known)}")
        parsed[name] = reward_term(name, spec)
    return parsed


def reward_term(name: str, spec) -> RewardTerm:
    """A weight, or {weight: W, margin: M}: the hinge -relu(M - r) in place of r (DMDR)."""
    if isinstance(spec, dict):
        unknown = set(spec) - {"weight", "margin"}
        if unknown:
            raise UsageError(f"reward {name} takes weight and margin, got {', '.join(map(str, sorted(unknown)))}; "
                             f"e.g. {{{name}: {{weight: 1.0, margin: 0.3}}}}")
        weight, margin = spec.get("weight", 1.0), spec.get("margin")
    else:
        weight, margin = spec, None
    given = {"weight": weight} if margin is None else {"weight": weight, "margin": margin}
    for key, number in given.items():
        if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
            raise UsageError(f"reward {key} of {name} must be a finite number, got '{number}'")
    return RewardTerm(float(weight), None if margin is None else float(margin))


def reward_text(terms: dict[str, RewardTerm]) -> str:
    """The canonical spelling stored with a run: a bare name for a single weight-1 reward without a margin."""
    if len(terms) == 1 and next(iter(terms.values())) == RewardTerm(1.0):
        return next(iter(terms))

    def spelled(term: RewardTerm) -> str:
        return f"{term.weight:g}" if term.margin is None else f"{{weight: {term.weight:g}, margin: {term.margin:g}}}"

    return "{" + ", ".join(f"{name}: {spelled(term)}" for name, term in terms.items()) + "}"
