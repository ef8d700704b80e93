"""The papers' evaluation protocols by name (`bench eval protocol=NAME`): each fixes the prompt set, the images a
prompt, the seed and the metric versions, and shapes its table as the paper does.

    hpsv2-benchmark   HPSv2's benchmark prompts (anime, concept-art, paintings, photo: 800 each), one image a
                      prompt, HPSv2.1 per style and their mean, as HPSv2's leaderboard and DI* report it
    parti             PartiPrompts (1,632), one image a prompt: ImageReward, PickScore, CLIP score, as DI* reports
    coco              COCO-2014 validation captions, 10,000 drawn with seed 0, one image a prompt: FID (clean-fid,
                      256 px centre crop first), CLIP score, aesthetic, ImageReward, HPSv2.0, as DI++ reports

The user supplies only what cannot be downloaded here: the prompt files (`prompts=KIND:PATH`) and, for FID, the
reference (`fid_ref=`). A value the protocol fixes cannot be overridden: that would be another protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import UsageError, did_you_mean


@dataclass(frozen=True)
class Protocol:
    name: str
    prompt_kind: str  # the prompt set's loader: prompts=KIND:PATH
    fixed: dict  # EvalRequest fields the protocol sets
    columns: dict  # table column -> metric (or "style:NAME" for a per-style mean, "mean of styles")
    source: str
    needs_fid_ref: bool = False


HPS_STYLES = ("anime", "concept-art", "paintings", "photo")

PROTOCOLS = {
    "hpsv2-benchmark": Protocol(
        "hpsv2-benchmark", "hps_v2", {"n": 1, "subset": 0, "seed": 0, "metrics": ("hpsv2.1",)},
        {"Animation": "style:anime", "Concept-art": "style:concept-art", "Painting": "style:paintings",
         "Photo": "style:photo", "Averaged": "mean of styles"},
        "HPSv2 benchmark (Wu et al., 2023), HPSv2.1 column as on its leaderboard; DI* reports HPSv2.1 so"),
    "parti": Protocol(
        "parti", "parti", {"n": 1, "subset": 0, "seed": 0, "metrics": ("image_reward", "pickscore", "clip_score")},
        {"ImageReward": "image_reward", "PickScore": "pickscore", "CLIP score": "clip_score"},
        "PartiPrompts (Yu et al., 2022), the metrics DI* reports on them"),
    "coco": Protocol(
        "coco", "coco", {"n": 1, "subset": 10_000, "seed": 0, "fid_resize": 256,
                         "metrics": ("clip_score", "aesthetic", "image_reward", "hpsv2")},
        {"FID": "fid", "CLIP score": "clip_score", "Aesthetic": "aesthetic", "ImageReward": "image_reward",
         "HPSv2.0": "hpsv2"},
        "COCO-2014 validation captions, the metrics DI++ reports (subset size and FID crop: our choice, the "
        "common COCO-10K/clean-fid convention)", needs_fid_ref=True),
}


def apply(name: str, options: dict, request) -> None:
    """Set the protocol's fixed fields on an EvalRequest, after checking the user's options against them."""
    if name not in PROTOCOLS:
        raise UsageError(f"protocol={name} is not valid{did_you_mean(name, PROTOCOLS)}")
    protocol = PROTOCOLS[name]
    clashing = [key for key in protocol.fixed if key in options]
    if clashing:
        raise UsageError(f"protocol={name} fixes {', '.join(clashing)}; drop {clashing[0]}=, or evaluate without "
                         "protocol= to choose your own")
    kind = options.get("prompts", "").partition(":")[0]
    if kind != protocol.prompt_kind or ":" not in options.get("prompts", ""):
        raise UsageError(f"protocol={name} reads its prompts from your copy of them: add "
                         f"prompts={protocol.prompt_kind}:PATH")
    if protocol.needs_fid_ref and "fid_ref" not in options:
        raise UsageError(f"protocol={name} includes FID: add fid_ref=FOLDER_OR_NPZ (COCO-2014 validation images, "
                         "or their clean-fid statistics)")
    for key, value in protocol.fixed.items():
        setattr(request, key, value)


def table(name: str, metrics: dict, lines: list[dict]) -> dict:
    """The protocol's row for one evaluation: {"columns": [...], "row": [...]}, in the paper's order (lists, since
    JSON files here are written with sorted keys)."""
    protocol = PROTOCOLS[name]
    row = {}
    by_style = {}
    if any(v.startswith("style:") for v in protocol.columns.values()):
        metric = protocol.fixed["metrics"][0]
        for line in lines:
            by_style.setdefault(line["image"].split("/")[1], []).append(line[metric])
    for column, source in protocol.columns.items():
        if source.startswith("style:"):
            values = by_style.get(source.removeprefix("style:"), [])
            row[column] = sum(values) / len(values) if values else None
        elif source == "mean of styles":
            means = [sum(v) / len(v) for s, v in by_style.items() if s in HPS_STYLES]
            row[column] = sum(means) / len(means) if len(means) == len(HPS_STYLES) else None
        else:
            row[column] = metrics.get(source)
    return {"columns": list(row), "row": list(row.values())}


def markdown(name: str, label: str, table_: dict) -> str:
    """The row as a markdown table under the paper's column names, for pasting beside the paper's."""
    cells = ["-" if v is None else f"{v:.4g}" for v in table_["row"]]
    return "\n".join([f"| {name} | {' | '.join(table_['columns'])} |", "|---" * (len(cells) + 1) + "|",
                      f"| {label} | {' | '.join(cells)} |", ""])
