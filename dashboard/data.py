"""What the pages read: runs, protocols, studies and files, cached and confined to the results folder."""

from __future__ import annotations

import json
import os
import re
import warnings as warnings_module
from pathlib import Path

import pandas as pd
import streamlit as st
import yaml

from bench.eval import METRICS
from bench.store import Store
from bench.store.files import read_jsonl
from bench.store.runs import StoreWarning

__all__ = ["METRICS", "inside", "load_evals", "load_reported", "load_runs", "results_root", "run_files", "stamp"]

# Config keys that do not change what a run measures: seeds are averaged over, the rest is bookkeeping.
NOT_SETTINGS = ("seed", "name", "resume", "results", "device")
REPORTED = Path(__file__).resolve().parents[1] / "bench" / "eval" / "reported.yaml"


def plain(text) -> str:
    """Text from runs, folders or studies, escaped so Streamlit's markdown shows it as written: no link, emphasis,
    heading or formula can be smuggled in through a run name or a folder name."""
    return re.sub(r"([\\`*_{}\[\]()#+!|<>~$])", r"\\\1", str(text))


def run_link(run_ids: list[str]) -> str:
    """The page of a run, or the comparison of a setting's seeds, as a relative address."""
    if len(run_ids) == 1:
        return f"?page=run&run={run_ids[0]}"
    return f"?page=compare&runs={','.join(run_ids[:4])}"


def results_root() -> Path:
    return Path(os.environ.get("BENCH_RESULTS", "results")).resolve()


def inside(root: Path, *parts: str) -> Path | None:
    """The file at root/parts if it exists and lies below root after resolving links, else None.

    Every file the dashboard opens goes through here, so no URL parameter reaches outside the results folder.
    """
    try:
        path = root.joinpath(*parts).resolve()
    except (OSError, ValueError):
        return None
    return path if path.is_relative_to(root) and path.is_file() else None


def stamp(root: Path) -> tuple[float, float]:
    """Changes when runs are added or updated: the cache key of everything loaded below."""
    index, runs = root / "index.sqlite", root / "runs"
    return (index.stat().st_mtime if index.exists() else 0.0, runs.stat().st_mtime if runs.exists() else 0.0)


def protocol_of(config: dict) -> dict:
    """What must match for two numbers to compare: the backend and its settings, reward and evaluation settings.

    The temperature of p* is not part of it: it matters only for the *_star columns, shown beside them.
    """
    evaluation = config.get("eval", {})
    return {
        "backend": config["backend"], "reward": config["reward"],
        "eval_samples": evaluation.get("samples"), "eval_seed": evaluation.get("seed"),
    }


def target_of(config: dict) -> float:
    """The alpha_rew of the closed-form optimum that the run's *_star metrics measure distance to."""
    return config.get("eval", {}).get("target_alpha_rew") or config["method"].get("alpha_rew")


def protocol_label(protocol: dict) -> str:
    backend = protocol["backend"]
    if backend["name"] == "analytic":
        parts = [f"analytic {backend['image_size']}px, {backend['prompts']} captions x {backend['components']} "
                 f"modes, s0 {backend['s0']}"]
    else:
        parts = [f"{backend['name']} {backend.get('model', '')}".strip()]
    parts.append(f"reward {protocol['reward']}")
    parts.append(f"eval {protocol['eval_samples']} samples, seed {protocol['eval_seed']}")
    return " | ".join(parts)


@st.cache_data(show_spinner=False, max_entries=4)
def load_runs(root: str, key: tuple) -> tuple[pd.DataFrame, list[str]]:
    """One row a run, from the index; and a warning for every run folder that cannot be read."""
    store = Store(root)
    rows, indexed = [], set()
    with warnings_module.catch_warnings(record=True) as caught:
        warnings_module.simplefilter("always", StoreWarning)
        stored = store.rows()
    warnings = [str(w.message) for w in caught if issubclass(w.category, StoreWarning)]
    for row in stored:
        indexed.add(row["id"])
        try:
            config = json.loads(row["config"])
            summary = json.loads(row["summary"]) if row["summary"] else None
        except (TypeError, json.JSONDecodeError):
            warnings.append(f"skipped run {row['id']}: its index entry is corrupt (bench runs reindex rebuilds it)")
            continue
        if row["method"] == "external":
            continue  # an evaluated pipeline, not a training run: it shows in the evaluations table
        if row["status"] == "finished" and not (summary and "metrics" in summary):
            warnings.append(f"skipped run {row['id']}: finished but its summary is missing or partial")
            continue
        setting = {k: v for k, v in config.items() if k not in NOT_SETTINGS}
        protocol = protocol_of(config)
        metrics = (summary or {}).get("metrics", {})
        rows.append({
            "id": row["id"], "status": row["status"], "method": row["method"], "created": row["created"],
            "seed": config.get("seed"), "study": row["study"], "trial": row["trial"],
            "steps": config.get("train", {}).get("steps"),
            "alpha_rew": config["method"].get("alpha_rew"), "alpha_cfg": config["method"].get("alpha_cfg"),
            "p*_at": target_of(config),
            "protocol": json.dumps(protocol, sort_keys=True), "protocol_label": protocol_label(protocol),
            "setting": json.dumps(setting, sort_keys=True),
            "optimum_curve": json.dumps(((summary or {}).get("optimum") or {}).get("curve")),
            **{m: metrics.get(m) for m in METRICS},
        })
    runs_dir = Path(root) / "runs"
    if runs_dir.exists():
        for folder in runs_dir.iterdir():
            if folder.name in indexed or not folder.is_dir():
                continue
            warnings.append(f"skipped run folder {folder.name}: not in the index, or its files are unreadable")
    frame = pd.DataFrame(rows, columns=["id", "status", "method", "created", "seed", "study", "trial", "steps",
                                        "alpha_rew", "alpha_cfg", "p*_at", "protocol", "protocol_label", "setting",
                                        "optimum_curve", *METRICS])
    return frame, warnings


@st.cache_data(show_spinner=False, max_entries=4)
def load_evals(root: str, key: tuple) -> pd.DataFrame:
    """One row an evaluation (bench eval), with its protocol less what differs by run (the checkpoint)."""
    rows = []
    for row in Store(root).evals():
        protocol = json.loads(row["protocol"])
        # What identifies the model evaluated is not part of the protocol that rows must share.
        shared = {k: v for k, v in protocol.items()
                  if k not in ("checkpoint_sha256", "checkpoint_step", "generator", "pipeline_sha256")}
        prompt_set = protocol["prompt_set"]
        measured = [*protocol.get("own_metrics", {}).values(),
                    *(f"{m['name']} {m['version']}" for m in protocol["metrics"].values())]
        if protocol.get("fid"):
            measured.append(f"FID vs {Path(protocol['fid']['reference']).name}")
        backend = protocol.get("backend", {}).get("name", "diffusers pipeline")
        label = (f"{backend} | prompts {prompt_set['name']} "
                 f"v{prompt_set['version']}, {prompt_set['per_prompt']} a prompt, seed {prompt_set['seed']} | "
                 + ", ".join(measured))
        named = f"protocol {protocol['name']} | " if protocol.get("name") else ""
        rows.append({"run": row["run_id"], "eval": row["eval_id"], "protocol": json.dumps(shared, sort_keys=True),
                     "protocol_label": named + label, "protocol_name": protocol.get("name"),
                     **json.loads(row["metrics"])})
    return pd.DataFrame(rows)


def load_reported() -> list[dict]:
    """Published numbers: the bundled file, or your own in the same format (BENCH_REPORTED=PATH)."""
    return read_reported(os.environ.get("BENCH_REPORTED", str(REPORTED)))


@st.cache_data(show_spinner=False)
def read_reported(path: str) -> list[dict]:
    return yaml.safe_load(Path(path).read_text()) or []


def run_files(root: Path, run_id: str, runs: pd.DataFrame) -> dict | None:
    """The readable files of a known run; None for an id that is not a run of this store."""
    if run_id not in set(runs["id"]):
        return None
    config = inside(root, "runs", run_id, "config.yaml")
    summary = inside(root, "runs", run_id, "summary.json")
    metrics = inside(root, "runs", run_id, "metrics.jsonl")
    grids = sorted((root / "runs" / run_id / "samples").glob("step_*.png")) if config else []
    evals = {}
    for folder in sorted((root / "runs" / run_id / "evals").glob("*")) if config else []:
        summary_path = inside(root, "runs", run_id, "evals", folder.name, "summary.json")
        if summary_path:
            # Flat (images/00000.png) or one folder a style (images/<style>/00000.jpg, hpsv2's layout).
            images = sorted(p for p in (folder / "images").rglob("*") if p.suffix in (".png", ".jpg")
                            and inside(root, "runs", run_id, "evals", folder.name, *p.relative_to(folder).parts))
            evals[folder.name] = {"summary": json.loads(summary_path.read_text()), "images": images}
    return {
        "config": yaml.safe_load(config.read_text()) if config else {},
        "summary": json.loads(summary.read_text()) if summary else None,
        "records": read_jsonl(metrics) if metrics else [],
        "grids": {int(p.stem.split("_")[1]): p for p in grids if inside(root, "runs", run_id, "samples", p.name)},
        "evals": evals,
    }
