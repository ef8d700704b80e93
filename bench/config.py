"""Typed run configuration: dataclass schema, `key=value` overrides with dotted keys, YAML presets.

Every field is declared with `param(default, help, bounds...)`, so one declaration gives the default, the type
checked on override, the valid range and the line in `bench run --help`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from bench.errors import UsageError, did_you_mean, yaml_problem
from bench.fields import param
from bench.rewards import SCORERS, parse_reward, reward_text
from bench.rewards.analytic import ANALYTIC_REWARDS
from bench.store.runs import default_root
from bench.train.trackers import parse_trackers

PRESET_DIR = Path(__file__).parent / "presets"
# Presets of this project (analytic or tiny); every other preset is a paper's recipe and sources each value.
OUR_PRESETS = ("distill", "smoke", "wide16")


@dataclass
class TrainConfig:
    steps: int = param(1200, "generator updates", ge=1)
    batch_size: int = param(128, "samples per generator and per fake-score update", ge=1)
    optimizer: str = param("sgd", "generator optimiser: sgd, or adam (the relatives' choice; it turns the noise of "
                           "a near-zero gradient into steps of size lr_gen, so a generator with nothing to gain "
                           "drifts: README, Drift)", choices=("sgd", "adam"))
    lr_gen: float = param(0.03, "learning rate of the generator (for adam on SD-scale networks about 1e-5: the "
                          "presets)", gt=0)
    lr_fake: float = param(1e-3, "Adam learning rate of the fake-score network", gt=0)
    beta1: float = param(0.0, "Adam beta1 of the fake score, and of the generator with adam (0 as in the runnable "
                         "relatives)", ge=0, lt=1)
    beta2: float = param(0.999, "Adam beta2", ge=0, lt=1)
    grad_clip: float = param(3.0, "max gradient norm per update (0 disables clipping); with SGD it bounds a step by "
                             "lr_gen * grad_clip", ge=0)
    ema: float = param(0.99, "EMA decay of the generator used for evaluation (0 disables)", ge=0, lt=1)
    log_every: int = param(10, "steps between training log lines", ge=1)
    eval_every: int = param(400, "steps between evaluations on the fixed seed set (0: only at start and end)",
                            ge=0)
    ckpt_every: int = param(200, "steps between checkpoints (the last step is always saved)", ge=1)
    precision: str = param("auto", "fp32, or bf16 autocast (auto: bf16 on a GPU, fp32 on the CPU)",
                           choices=("auto", "fp32", "bf16"))
    parallel: str = param("ddp", "how the processes of a launch share the trained networks: ddp (each holds them "
                          "whole) or fsdp (each holds 1/P of their weights, gradients, optimiser states and EMA; "
                          "README, Sharded training)", choices=("ddp", "fsdp"))


@dataclass
class EvalConfig:
    samples: int = param(1024, "generator samples per evaluation, split evenly over captions", ge=16)
    kl_samples: int = param(16, "samples a caption for the exact KL to the reference (analytic world; 0: none)", ge=0)
    seed: int = param(1234, "seed of the fixed evaluation noise (the same at every evaluation)")
    grid: bool = param(True, "save a PNG grid of samples at each evaluation")
    target_alpha_rew: float = param(
        0.0, "temperature of the closed-form optimum p* that *_star metrics compare with (0: method.alpha_rew)", ge=0)


@dataclass
class ResultsConfig:
    dir: str = param("results", "results store folder (or set BENCH_RESULTS)")


def canonical_reward(text: str) -> str:
    return reward_text(parse_reward(text, (*ANALYTIC_REWARDS, *SCORERS)))


@dataclass
class RunConfig:
    method: Any = param(None, "alignment method: a registered name or module:Class")
    backend: Any = param(None, "reference model family")
    reward: str = param("linear", "reward to maximise: a name or {name: weight, ...} over "
                        f"{', '.join([*ANALYTIC_REWARDS, *SCORERS])}", parse=canonical_reward)
    weights: str = param("", "folder with the image scorers' weights, one subfolder per scorer (or BENCH_WEIGHTS)")
    seed: int = param(0, "seed of initialisation and training noise")
    device: str = param("cpu", "torch device: cpu, cuda, cuda:N or auto")
    threads: int = param(0, "torch CPU threads (0: OMP_NUM_THREADS if set, else 1 for the analytic world, whose small "
                         "tensors gain little from more, else this machine's cores over its processes)", ge=0)
    name: str = param("", "optional label stored with the run")
    tracker: str = param("", "experiment trackers that mirror the run: tensorboard, mlflow, wandb, trackio "
                         "(comma-separated; empty: none; offline, beside the run and in the results store)",
                         parse=parse_trackers)
    resume: str = param("", "continue a run: 'latest' or a run id (its saved configuration is used)")
    init: str = param("", "start the generator (its EMA weights) and the fake score from a run's last checkpoint, "
                      "by run id; the run must have the same backend settings")
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in PLUGINS:
                out[f.name] = {"name": value.name, **dataclasses.asdict(value)}
            elif dataclasses.is_dataclass(value):
                out[f.name] = dataclasses.asdict(value)
            else:
                out[f.name] = value
        return out


DEFAULT_METHOD = "di_star"
DEFAULT_BACKEND = "analytic"
# Sections chosen by name (`method=NAME`), whose keys (`method.KEY=VALUE`) are the chosen class's fields.
PLUGINS = ("method", "backend")


# ---------------------------------------------------------------------------------------------------------
# Parsing


def split_overrides(args: list[str]) -> list[tuple[str, str]]:
    pairs = []
    seen = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise UsageError(f"expected key=value, got '{arg}' (for example: train.steps=500)")
        if key in seen and seen[key] != value:
            raise UsageError(f"'{key}' is given twice ({seen[key]} and {value}); keep one")
        seen[key] = value
        pairs.append((key.strip(), value.strip()))
    return pairs


def parse_value(key: str, text: str, kind: type, meta: dict):
    """Convert `text` to `kind` and check the declared range; the message names the key and the fix."""
    try:
        if meta.get("parse"):
            value = meta["parse"](text)
        elif kind is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            value = lowered in ("true", "1", "yes")
        elif kind is int:
            value = int(text)
        elif kind is float:
            value = float(text)
            if not math.isfinite(value):
                raise UsageError(f"{key} must be a finite number, got '{text}'")
        else:
            value = text
    except ValueError:
        names = {bool: "true or false", int: "an integer", float: "a number"}
        raise UsageError(f"{key} expects {names[kind]}, got '{text}'") from None
    check_value(key, value, meta)
    return value


def check_value(key: str, value, meta: dict) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise UsageError(f"{key}={value} is not valid{did_you_mean(str(value), choices)}")
    for bound, ok, words in (
        ("ge", lambda v, b: v >= b, "at least"),
        ("gt", lambda v, b: v > b, "greater than"),
        ("le", lambda v, b: v <= b, "at most"),
        ("lt", lambda v, b: v < b, "less than"),
    ):
        limit = meta.get(bound)
        if limit is not None and not ok(value, limit):
            raise UsageError(f"{key} must be {words} {limit}, got {value}")


def leaf_fields(obj, prefix: str = ""):
    """(dotted key, owner object, field, type) for every settable field below `obj`."""
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name in PLUGINS and prefix == "":
            yield from leaf_fields(getattr(obj, f.name), f"{f.name}.")
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaf_fields(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", obj, f, hints[f.name]


def load_preset(name: str) -> list[tuple[str, str]]:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        names = [p.stem for p in PRESET_DIR.glob("*.yaml")]
        raise UsageError(f"unknown preset '{name}'{did_you_mean(name, names)}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"preset {path} is not valid YAML: {yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise UsageError(f"preset {path} must be a mapping of settings such as train: {{steps: 60}}")
    flat = flatten(data)
    empty = [key for key, value in flat.items() if value is None]
    if empty:
        raise UsageError(f"preset {path}: {empty[0]} has no value")
    return [(key, str(value)) for key, value in flat.items()]


def flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def build_config(args: list[str], *, base: list[str] = ()) -> RunConfig:
    """Resolve the layers into a validated RunConfig. Later layers win: the defaults, `preset=NAME` (a bundle of
    defaults), `base` (a sweep's fixed settings), the command line. Within one layer a key given twice with two
    values is a mistake.
    """
    pairs = split_overrides(args)
    preset = [value for key, value in pairs if key == "preset"]
    ordered = (load_preset(preset[0]) if preset else []) + split_overrides(list(base))
    ordered += [(k, v) for k, v in pairs if k != "preset"]
    names = {"method": DEFAULT_METHOD, "backend": DEFAULT_BACKEND}
    for key, value in ordered:
        section = key.removesuffix(".name")
        if section in PLUGINS:
            names[section] = value
    cfg = new_config(names["method"], names["backend"])
    cfg.results.dir = default_root()

    fields = {key: (owner, f, kind) for key, owner, f, kind in leaf_fields(cfg)}
    for key, value in ordered:
        if key.removesuffix(".name") in PLUGINS:
            continue
        if key not in fields:
            raise UsageError(f"unknown key '{key}'{did_you_mean(key, fields)} (see bench run --help)")
        owner, f, kind = fields[key]
        setattr(owner, f.name, parse_value(key, value, kind, f.metadata))
    cfg.method.validate()
    return cfg


def new_config(method: str, backend: str) -> RunConfig:
    from bench.backends import load_backend
    from bench.method import load_method

    return RunConfig(method=load_method(method)(), backend=load_backend(backend).Config())


def config_from_dict(data: dict) -> RunConfig:
    """Rebuild a RunConfig saved with a run (resume, sweeps)."""
    return build_config(config_args(data))


def config_args(data: dict) -> list[str]:
    """key=value arguments that rebuild a saved configuration exactly (numbers at full precision)."""
    names = [f"{section}={data[section]['name']}" for section in PLUGINS]
    flat = {k: v for k, v in flatten(data).items() if k not in (f"{s}.name" for s in PLUGINS)}
    return [*names, *(f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"
                      for key, value in flat.items())]


def help_text(method_name: str = DEFAULT_METHOD, backend_name: str = DEFAULT_BACKEND) -> str:
    from bench.backends import BACKENDS
    from bench.method import available_methods

    cfg = new_config(method_name, backend_name)
    lines = [
        "usage: bench run [key=value ...] [--dry-run]",
        "",
        "Train a one-step generator against a reference model and store the run. --dry-run prints the resolved",
        "configuration and an estimate of memory and GPU-hours a GPU type, and loads nothing.",
        f"Methods: {', '.join(available_methods())} (method=NAME; bench run method=NAME --help for its keys).",
        f"Backends: {', '.join(BACKENDS)} (backend=NAME; bench run backend=NAME --help for its keys).",
        f"Presets: {', '.join(sorted(p.stem for p in PRESET_DIR.glob('*.yaml')))} (preset=NAME).",
        "",
    ]
    rows = [(section, chosen, RunConfig.__dataclass_fields__[section].metadata["help"])
            for section, chosen in zip(PLUGINS, (method_name, backend_name), strict=True)]
    for key, owner, f, _ in leaf_fields(cfg):
        default = getattr(owner, f.name)
        rows.append((key, "''" if default == "" else str(default), f.metadata.get("help", "")))
    width = max(len(key) for key, _, _ in rows) + 2
    shown_width = max(12, *(len(shown) + 2 for _, shown, _ in rows))
    lines += [f"  {key:<{width}}{shown:<{shown_width}}{text}" for key, shown, text in rows]
    return "\n".join(lines)
