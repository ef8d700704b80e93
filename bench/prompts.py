"""Prompt sets: the official ones loaded from local files with their real formats, and our own.

    coco:PATH     COCO-2014 captions: the annotation JSON (captions_val2014.json) or one caption per line
    hps_v2:DIR    the HPSv2 benchmark: anime.json, concept-art.json, paintings.json, photo.json (lists of prompts)
    parti:PATH    PartiPrompts TSV (a 'Prompt' column)
    text:PATH     any text file, one prompt a line
    builtin       64 prompts in the four HPSv2 styles, written for this project (smoke runs)
    analytic      the analytic world's captions

A set's version is a hash of its prompts, so two numbers name the same prompts or say they do not. A subset
of n with a seed is the same on every machine.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.errors import UsageError, did_you_mean

HPS_STYLES = ("anime", "concept-art", "paintings", "photo")
BUILTIN = Path(__file__).with_name("builtin_prompts.yaml")


@dataclass(frozen=True)
class PromptSet:
    name: str
    prompts: tuple[str, ...]
    styles: tuple[str, ...] | None = None

    @property
    def version(self) -> str:
        return hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()[:12]

    def subset(self, n: int, seed: int) -> PromptSet:
        """n prompts chosen with `seed`, in their original order (deterministic across machines)."""
        if n >= len(self.prompts):
            return self
        keep = sorted(random.Random(seed).sample(range(len(self.prompts)), n))
        styles = tuple(self.styles[i] for i in keep) if self.styles else None
        return PromptSet(f"{self.name}[n={n},seed={seed}]", tuple(self.prompts[i] for i in keep), styles)


def _require(path: Path, what: str, spec: str) -> Path:
    if not path.exists():
        raise UsageError(f"{what} not found at {path.resolve()}; point to it with prompts={spec}:PATH")
    return path


def coco(path: str) -> PromptSet:
    file = _require(Path(path), "COCO captions file", "coco")
    if file.suffix == ".json":
        data = json.loads(file.read_text())
        notes = sorted(data["annotations"], key=lambda a: (a["image_id"], a["id"]))
        prompts = tuple(" ".join(a["caption"].split()) for a in notes)
    else:
        prompts = lines_of(file)
    return PromptSet("coco", prompts)


def lines_of(file: Path) -> tuple[str, ...]:
    return tuple(line.strip() for line in file.read_text().splitlines() if line.strip())


def text(path: str) -> PromptSet:
    """Any text file, one prompt a line: the set is named after the file."""
    file = _require(Path(path), "prompt file", "text")
    return PromptSet(file.stem, lines_of(file))


def hps_v2(folder: str) -> PromptSet:
    root = Path(folder)
    prompts, styles = [], []
    for style in HPS_STYLES:
        items = json.loads(_require(root / f"{style}.json", f"HPSv2 style file {style}.json", "hps_v2").read_text())
        prompts += items
        styles += [style] * len(items)
    return PromptSet("hps_v2", tuple(prompts), tuple(styles))


def parti(path: str) -> PromptSet:
    with open(_require(Path(path), "PartiPrompts TSV", "parti"), newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if rows and "Prompt" not in rows[0]:
        raise UsageError(f"{path} has no 'Prompt' column (found: {', '.join(rows[0])})")
    return PromptSet("parti", tuple(row["Prompt"] for row in rows))


def builtin() -> PromptSet:
    data = yaml.safe_load(BUILTIN.read_text())
    prompts = tuple(p for style in HPS_STYLES for p in data[style])
    return PromptSet("builtin", prompts, tuple(style for style in HPS_STYLES for _ in data[style]))


def analytic(count: int = 8) -> PromptSet:
    from bench.analytic.pictures import captions

    return PromptSet("analytic", tuple(captions(count)))


LOADERS = {"coco": coco, "hps_v2": hps_v2, "parti": parti, "text": text}


def load_prompt_set(spec: str) -> PromptSet:
    """'builtin', 'analytic', or 'KIND:PATH' for an official set in local files."""
    kind, _, path = spec.partition(":")
    if spec == "builtin":
        return builtin()
    if spec == "analytic":
        return analytic()
    if kind not in LOADERS:
        raise UsageError(f"unknown prompt set '{kind}'{did_you_mean(kind, [*LOADERS, 'builtin', 'analytic'])}")
    if not path:
        raise UsageError(f"prompt set {kind} loads from a local file: use {kind}:PATH")
    return LOADERS[kind](path)
