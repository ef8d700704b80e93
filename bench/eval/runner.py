"""`bench eval`: score a run's generator on a prompt set with fixed seeds, resumably, with its protocol.

    runs/<id>/evals/<eval id>/protocol.json   what was measured and how (written first; a rerun must match it)
                              images/<index:05d>.png
                              samples/<first index>.pt   full-precision samples, for the exact world metrics
                              scores.jsonl              one line an image: index, caption, seed, scores
                              summary.json              protocol, metrics, per-prompt scores, provenance

Image i's noise depends on (seed, i) only, so batching and interruption change nothing: a resumed evaluation
skips the images already scored and ends with the numbers an uninterrupted one gives.
"""

from __future__ import annotations

import io
import json

import torch
from tqdm import tqdm

from bench.backends import build_backend
from bench.config import config_from_dict
from bench.errors import UsageError
from bench.eval.prompts import PromptSet
from bench.provenance import file_sha256, provenance
from bench.store import Run, Store
from bench.store.files import atomic_torch_save, atomic_write_bytes, atomic_write_json, read_jsonl

PROMPT_SETS = ("analytic",)


def evaluate_run(store: Store, run: Run, prompts: str, per_prompt: int, seed: int, batch: int,
                 progress: bool) -> dict:
    if prompts not in PROMPT_SETS:
        raise UsageError(f"prompt set '{prompts}' is not available for run {run.id}; choose from: "
                         f"{', '.join(PROMPT_SETS)}")
    if not run.checkpoint_path.exists():
        raise UsageError(f"run {run.id} has no checkpoint to evaluate (looked for {run.checkpoint_path})")
    cfg = config_from_dict(run.config)
    backend = build_backend(cfg, torch.device("cpu"))
    generator = backend.generator
    state = torch.load(run.checkpoint_path, map_location="cpu", weights_only=True)
    generator.load_state_dict(state["ema"])
    generator.eval()

    eval_id = f"{prompts}-n{per_prompt}-seed{seed}"
    folder = run.dir / "evals" / eval_id
    total = per_prompt * len(backend.captions)
    protocol = {
        "prompt_set": {"name": prompts, "version": PromptSet(prompts, tuple(backend.captions)).version,
                       "size": len(backend.captions), "per_prompt": per_prompt, "seed": seed},
        "images": total, "resolution": list(backend.shape), "resize": "none (images saved x4 nearest for viewing)",
        "metrics": {"reward": f"{backend.reward.name} v{backend.reward.version}", "world": "analytic exact v1"},
        "generator": "ema", "checkpoint_step": state["step"], "checkpoint_sha256": file_sha256(run.checkpoint_path),
        "backend": cfg.backend, "world": run.config["world"],
    }
    saved = folder / "protocol.json"
    if saved.exists() and json.loads(saved.read_text()) != protocol:
        raise UsageError(f"{folder} holds an evaluation under another protocol (the checkpoint changed?); "
                         "remove that folder or evaluate with another seed=")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "samples").mkdir(exist_ok=True)
    atomic_write_json(saved, protocol)

    done = {r["index"] for r in read_jsonl(folder / "scores.jsonl")}
    todo = [i for i in range(total) if i not in done]
    bar = tqdm(total=total, initial=total - len(todo), desc=f"eval {run.id}", unit="img", disable=not progress)
    for start in range(0, len(todo), batch):
        indices = todo[start:start + batch]
        cond = torch.tensor([i // per_prompt for i in indices])
        with torch.no_grad():
            z = torch.stack([backend.image_noise(i, seed) for i in indices])
            x = generator(z, cond)
            scores = backend.image_scores(x, cond)
        # Images and samples first, score lines last: a line in scores.jsonl means its image is complete.
        for i, image in zip(indices, x, strict=True):
            buffer = io.BytesIO()
            backend.to_pil(image).save(buffer, format="PNG")
            atomic_write_bytes(folder / "images" / f"{i:05d}.png", buffer.getvalue())
        atomic_torch_save(folder / "samples" / f"{indices[0]:05d}.pt", {"index": torch.tensor(indices), "x": x})
        with open(folder / "scores.jsonl", "a") as handle:
            for k, i in enumerate(indices):
                line = {"index": i, "caption": backend.captions[i // per_prompt], "seed": seed,
                        **{name: float(values[k]) for name, values in scores.items()}}
                handle.write(json.dumps(line) + "\n")
        bar.update(len(indices))
    bar.close()

    samples = torch.zeros(total, *backend.shape)
    for path in sorted((folder / "samples").glob("*.pt")):
        chunk = torch.load(path, weights_only=True)
        samples[chunk["index"]] = chunk["x"]
    cond = torch.arange(total) // per_prompt
    metrics, rows = backend.metrics_of(samples, cond, seed)
    summary = {"run": run.id, "eval_id": eval_id, "protocol": protocol, "metrics": metrics, "per_prompt": rows,
               "provenance": provenance(run.config, "cpu")}
    atomic_write_json(folder / "summary.json", summary)
    store.index_eval(run, summary)
    return summary
