"""Search spaces: YAML files that name the objectives, the parameters to search and the settings to fix.

    objectives: [{metric: mmd_star, direction: minimize}]     # one entry: single objective; more: Pareto
    params:     {method.alpha_rew: {low: 0.02, high: 50, log: true}, method.estimator: {choices: [exact, sim]}}
    fixed:      {train.steps: 400}

or, to visit every combination of given values once (Optuna's grid sampler), every parameter as a grid:

    params:     {method.alpha_rew: {grid: [0.05, 0.5, 5]}}

Any `bench run` key can be searched or fixed. A space is checked completely before any trial starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.config import build_config, leaf_fields
from bench.errors import UsageError, did_you_mean, yaml_problem
from bench.eval import METRICS

SPACE_DIR = Path(__file__).parent


@dataclass
class Param:
    key: str
    kind: type
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list | None = None
    grid: list | None = None

    def suggest(self, trial):
        if self.grid is not None:
            return trial.suggest_categorical(self.key, self.grid)
        if self.choices is not None:
            return trial.suggest_categorical(self.key, self.choices)
        if self.kind is int:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)


@dataclass
class SearchSpace:
    name: str
    objectives: list[tuple[str, str]]
    params: list[Param]
    fixed: dict[str, str]

    @property
    def directions(self) -> list[str]:
        return [direction for _, direction in self.objectives]

    @property
    def grid(self) -> dict[str, list] | None:
        """The values of every parameter when the space is a grid, else None."""
        return {p.key: p.grid for p in self.params} if self.params and self.params[0].grid is not None else None


def space_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = SPACE_DIR / f"{name}.yaml"
    if not candidate.is_file():
        names = [p.stem for p in SPACE_DIR.glob("*.yaml")]
        raise UsageError(f"unknown search space '{name}'{did_you_mean(name, names)} (or give a path to a .yaml file)")
    return candidate


def load_space(name: str, run_args: list[str]) -> SearchSpace:
    path = space_path(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"search space {path} is not valid YAML: {yaml_problem(err)}") from None

    def fail(message: str):
        raise UsageError(f"search space {path.name}: {message}")

    if not isinstance(data, dict):
        fail("must be a mapping with the sections objectives, params and fixed")
    unknown = set(data) - {"objectives", "params", "fixed"}
    if unknown:
        fail(f"unknown section '{sorted(unknown)[0]}'; use objectives, params and fixed")
    for section, kind in (("objectives", list), ("params", dict), ("fixed", dict)):
        if data.get(section) is not None and not isinstance(data[section], kind):
            fail(f"{section} must be a {'list' if kind is list else 'mapping'}, got {type(data[section]).__name__}")
    objectives = []
    for entry in data.get("objectives") or fail("needs at least one objective"):
        if not isinstance(entry, dict):
            fail(f"each objective is a mapping such as {{metric: reward, direction: maximize}}, got '{entry}'")
        metric, direction = entry.get("metric"), entry.get("direction", "minimize")
        if metric not in METRICS:
            fail(f"unknown metric '{metric}'{did_you_mean(str(metric), METRICS)}")
        if direction not in ("minimize", "maximize"):
            fail(f"direction of {metric} must be minimize or maximize, got '{direction}'")
        objectives.append((metric, direction))
    fixed = {str(k): str(v) for k, v in (data.get("fixed") or {}).items()}
    empty = [key for key, value in (data.get("fixed") or {}).items() if value is None]
    if empty:
        fail(f"fixed setting {empty[0]} has no value")
    base = [f"{k}={v}" for k, v in fixed.items()]
    cfg = build_config(run_args, base=base)
    types = {key: kind for key, _, _, kind in leaf_fields(cfg)}
    params = []
    for key, spec in (data.get("params") or fail("needs at least one parameter to search")).items():
        if key not in types:
            fail(f"unknown key '{key}'{did_you_mean(key, types)}")
        spec = spec or {}
        if not isinstance(spec, dict):
            fail(f"{key} needs a mapping such as {{low: 0.1, high: 10}}, {{choices: [a, b]}} or {{grid: [1, 2]}}")
        param = Param(key, types[key], spec.get("low"), spec.get("high"), bool(spec.get("log", False)),
                      spec.get("choices"), spec.get("grid"))
        if param.grid is not None:
            if not isinstance(param.grid, list) or not param.grid:
                fail(f"{key} has an empty grid; give a list of values")
        elif param.choices is None:
            if param.low is None or param.high is None:
                fail(f"{key} needs low and high (or choices)")
            if not param.low < param.high:
                fail(f"{key} has an empty range [{param.low}, {param.high}]; low must be below high")
            if param.log and param.low <= 0:
                fail(f"{key} is searched on a log scale, so its range must be above 0, got low={param.low}")
        elif not param.choices:
            fail(f"{key} has an empty list of choices")
        if any(arg.partition("=")[0] == key for arg in run_args):
            raise UsageError(f"{key} is searched by the space {path.name}; drop it from the command line")
        # Both ends (or every choice) must be valid run settings: catch a range the schema forbids now.
        ends = param.grid or param.choices or [param.low, param.high]
        for value in ends:
            try:
                build_config([*run_args, f"{key}={value}"], base=base)
            except UsageError as err:
                fail(f"{key}={value} is outside what bench run accepts: {err}")
        params.append(param)
    if len({p.grid is None for p in params}) > 1:
        fail("either every parameter is a grid or none is (a grid sampler visits whole combinations)")
    if any(metric.endswith("_star") for metric, _ in objectives) and not closed_form(cfg):
        fail("*_star metrics need a reward with a closed-form optimum (linear or quadratic)")
    return SearchSpace(path.stem, objectives, params, fixed)


def closed_form(cfg) -> bool:
    from bench.rewards.analytic import ANALYTIC_REWARDS

    return cfg.reward in ANALYTIC_REWARDS and ANALYTIC_REWARDS[cfg.reward]((3, 2, 2)).quadratic_form() is not None
