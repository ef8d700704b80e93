"""`bench eval`: generate images for a prompt set with fixed seeds, score them, keep everything with its protocol.

    runs/<id>/evals/<eval id>/protocol.json   what is measured and how (written first; a rerun must match it)
                              images/<index:05d>.png, or images/<style>/<k:05d>.jpg for styled sets
                                                        (the layout hpsv2.evaluate reads: k counts per style)
                              samples/<first index>.safetensors  full-precision analytic samples, for the exact metrics
                              scores.jsonl              one line an image: index, prompt, seed, scores
                              summary.json              protocol, metrics, per-prompt scores, provenance

What is evaluated is a run of this suite (`run=ID`) or any diffusers pipeline folder (`pipeline=DIR`, a
baseline such as a published one-step model), which gets a run entry of its own in the store. Image i's noise
depends on (seed, i) only, so batching and interruption change nothing: a resumed evaluation skips the images
already scored and ends with the numbers an uninterrupted one gives.

Under `accelerate launch -m bench eval ...` the processes share the work: each takes every P-th batch of the
images still to do, on its own device, and writes its score lines to scores.part<rank>.jsonl; the main process
then merges them into scores.jsonl in index order and computes what needs every image (the exact metrics, FID).
The same batches, the same files, the same numbers as one process; a killed evaluation resumes under any number
of processes, since the part files count as done.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from tqdm import tqdm

from bench.diffusion import image_noise, noise_generator
from bench.errors import UsageError
from bench.prompts import PromptSet, load_prompt_set
from bench.provenance import folder_sha256, provenance
from bench.store import Run, Store
from bench.store.files import atomic_write_bytes, atomic_write_json, read_jsonl


@dataclass
class EvalRequest:
    prompts: str = "analytic"
    n: int = 64  # images per prompt
    subset: int = 0  # prompts drawn from the set with `seed` (0: all)
    seed: int = 0
    batch: int = 256
    metrics: tuple[str, ...] = ()  # image scorers by name
    weights: str | None = None
    fid_ref: str | None = None  # reference image folder or .npz statistics
    inception: str | None = None
    inception_sha256: str | None = None  # pins the Inception file (see bench.eval.fid)
    fid_resize: int = 0  # centre crop + LANCZOS to this side before FID's own resize (COCO protocol: 256)
    steps: int = 1  # pipelines only
    guidance: float = 0.0
    resolution: int = 0  # pipelines only; 0: the pipeline's default
    protocol: str = ""  # a paper's protocol by name (bench.eval.protocols), which fixed the fields above

    @property
    def eval_id(self) -> str:
        name = self.protocol or self.prompts.partition(":")[0]
        return f"{name}-n{self.n}{f'-sub{self.subset}' if self.subset else ''}-seed{self.seed}"


class AnalyticSource:
    """A run of the analytic world: its EMA generator on the world's captions, with the exact metrics."""

    def __init__(self, run: Run, request: EvalRequest):
        from bench.backends import build_backend
        from bench.config import config_from_dict

        backend = run.config["backend"]["name"]
        if backend != "analytic":
            raise UsageError(f"run {run.id} trained a {backend} generator, which its end exported as a pipeline: "
                             f"evaluate that with bench eval pipeline={run.dir / 'pipeline'} prompts=...")
        if request.prompts != "analytic":
            raise UsageError(f"run {run.id} lives in the analytic world, so it is evaluated on prompts=analytic "
                             f"(got prompts={request.prompts})")
        if request.subset:
            raise UsageError("subset= picks prompts from a large set; an analytic-world run is evaluated on all its "
                             "captions, so drop subset=")
        if request.n < 2:
            raise UsageError("n must be at least 2 for an analytic-world run (the exact metrics need two samples "
                             "a caption)")
        from bench.train.checkpoint import last_checkpoint, load_ema_generator

        self.run, self.cfg = run, config_from_dict(run.config)
        self.backend = build_backend(self.cfg, torch.device("cpu"))
        self.generator = self.backend.generator
        self.step = load_ema_generator(run, self.generator)
        self.checkpoint_sha256 = folder_sha256(last_checkpoint(run))
        self.generator.eval()
        self.prompt_set = PromptSet("analytic", tuple(self.backend.captions))

    def protocol(self) -> dict:
        return {"resolution": list(self.backend.shape), "resize": "none (images saved x4 nearest for viewing)",
                "generator": "ema", "checkpoint_step": self.step,
                "checkpoint_sha256": self.checkpoint_sha256, "backend": self.run.config["backend"],
                "own_metrics": {
                    "reward": f"{self.backend.reward.name} v{self.backend.reward.version}",
                    "world": "analytic exact v1"}}

    @torch.no_grad()
    def generate(self, indices: list[int], prompt_ids: list[int], texts: list[str], seed: int, folder: Path):
        cond = torch.tensor(prompt_ids)
        x = self.generator(torch.stack([image_noise(self.backend.shape, seed, i) for i in indices]), cond)
        (folder / "samples").mkdir(exist_ok=True)
        atomic_write_bytes(folder / "samples" / f"{indices[0]:05d}.safetensors",
                           save({"index": torch.tensor(indices), "x": x.contiguous()}))
        pil = [self.backend.to_pil(image) for image in x]
        return (x.clamp(-1, 1) + 1) / 2, pil, self.backend.image_scores(x, cond)

    def exact_metrics(self, folder: Path, total: int, per_prompt: int, seed: int):
        samples = torch.zeros(total, *self.backend.shape)
        for path in sorted((folder / "samples").glob("*.safetensors")):
            chunk = load_file(path)
            samples[chunk["index"]] = chunk["x"]
        cond = torch.arange(total) // per_prompt
        metrics, rows = self.backend.metrics_of(samples, cond, seed)
        noise = torch.stack([image_noise(self.backend.shape, seed, i) for i in range(total)])
        self.backend.add_exact_kl(self.generator, noise, cond, metrics, rows)
        return metrics, rows


class PipelineSource:
    """A diffusers pipeline folder sampled in `steps` steps, each image with its own seeded generator."""

    def __init__(self, source: str, request: EvalRequest, device: torch.device):
        from bench.backends.diffusers_io import load_pipeline, pipeline_folder

        self.source, self.path = source, pipeline_folder(source)
        # A hub id's cache folder is named by a commit, not the model; a run's export is named by its run.
        exported = self.path / "one_step.json"
        named = json.loads(exported.read_text()).get("run") if exported.exists() else None
        # A folder's files name its store entry: letters, digits, '.', '_' and '-' only, so no name leads
        # elsewhere ('../x', '/x').
        label = re.sub(r"[^A-Za-z0-9._-]+", "-", str(named or Path(source.rstrip("/")).name)).strip(".-")
        self.label = label or "pipeline"
        self.pipe = load_pipeline(self.path).to(device)
        self.pipe.set_progress_bar_config(disable=True)  # one bar, ours, counts images
        self.request = request
        self.prompt_set = load_prompt_set(request.prompts)
        # Hashed once (gigabytes): a changed pipeline gets its own store entry.
        self.sha256 = folder_sha256(self.path)

    def protocol(self) -> dict:
        r = self.request
        return {"resolution": r.resolution or "pipeline default", "resize": "none",
                "generator": f"{type(self.pipe).__name__} from {self.source}",
                "pipeline_sha256": self.sha256, "scheduler": type(self.pipe.scheduler).__name__,
                "steps": r.steps, "guidance": r.guidance}

    @torch.no_grad()
    def generate(self, indices: list[int], prompt_ids: list[int], texts: list[str], seed: int, folder: Path):
        r = self.request
        size = {"height": r.resolution, "width": r.resolution} if r.resolution else {}
        generators = [noise_generator(seed, i) for i in indices]
        images = self.pipe(prompt=texts, num_inference_steps=r.steps,
                           guidance_scale=r.guidance, generator=generators, output_type="pt", **size).images
        images = images.float().clamp(0, 1)
        pil = [to_pil(image.cpu()) for image in images]
        return images, pil, {}

    def exact_metrics(self, folder, total, per_prompt, seed):
        return {}, None


def to_pil(image: torch.Tensor):
    from PIL import Image

    return Image.fromarray((image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())


def image_paths(folder: Path, prompts: PromptSet, per_prompt: int) -> list[Path]:
    """Where every image goes: flat, or numbered within its style for styled sets (hpsv2's layout)."""
    if not prompts.styles:
        return [folder / "images" / f"{i:05d}.png" for i in range(len(prompts.prompts) * per_prompt)]
    paths, seen = [], {}
    for style in prompts.styles:
        first = seen.get(style, 0)
        seen[style] = first + per_prompt
        paths += [folder / "images" / style / f"{first + k:05d}.jpg" for k in range(per_prompt)]
    return paths


def pipeline_run(store: Store, source: PipelineSource) -> Run:
    """The store entry of an external pipeline: one per folder content, reused by every evaluation of it."""
    run_id = f"pipeline-{source.label}-{source.sha256[:10]}"
    if (store.root / "runs" / run_id).exists():
        return store.get(run_id)
    config = {"method": {"name": "external"}, "backend": {"name": "pipeline"}, "reward": "", "name": source.label,
              "seed": None, "pipeline": {"source": source.source, "path": str(source.path.resolve()),
                                         "class": type(source.pipe).__name__}}
    run = store.create(config, run_id=run_id)
    run.finish({"run": run_id, "metrics": {}, "provenance": provenance(config, "cpu")})
    return run


def evaluate(store: Store, request: EvalRequest, *, run: Run | None = None, pipeline: str | None = None,
             progress: bool = False) -> tuple[Run, dict | None]:
    """The evaluation, on this process's share of the images; the summary on the main process (None elsewhere)."""
    from bench.processes import process_state
    from bench.rewards import load_scorer

    state = process_state()  # one process unless started by accelerate launch
    rank, world = state.process_index, state.num_processes
    source = AnalyticSource(run, request) if run is not None else PipelineSource(pipeline, request, state.device)
    if run is None:
        with state.main_process_first():  # the main process creates the pipeline's store entry, the others read it
            run = pipeline_run(store, source)
    prompts = source.prompt_set.subset(request.subset, request.seed) if request.subset else source.prompt_set
    scorers = {name: load_scorer(name, request.weights).to(state.device) for name in request.metrics}
    fid = fid_setup(request, state.device) if request.fid_ref else None  # every process: each checks the pin
    folder = run.dir / "evals" / request.eval_id
    total = request.n * len(prompts.prompts)
    protocol = {
        **({"name": request.protocol} if request.protocol else {}),
        "prompt_set": {"name": prompts.name, "version": prompts.version, "size": len(prompts.prompts),
                       "per_prompt": request.n, "seed": request.seed},
        "images": total, **source.protocol(),
        "metrics": {name: scorer.info for name, scorer in scorers.items()},
        "scorer_resize": "torch bicubic, antialiased, inside the autograd graph" if scorers else None,
        "fid": {"protocol": fid["protocol"], "reference": request.fid_ref, "pre_resize": request.fid_resize,
                "inception_sha256": fid["inception"].sha256} if fid else None,
    }
    saved = folder / "protocol.json"
    # Every process checks (the same files, the same answer), so none waits on one that refused.
    if saved.exists() and json.loads(saved.read_text()) != protocol:
        raise UsageError(f"{folder} holds an evaluation under another protocol (the checkpoint, pipeline or a "
                         "metric changed?); remove that folder or evaluate with another seed=")
    state.wait_for_everyone()
    if state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(saved, protocol)
        for stale in folder.rglob(".*.tmp"):  # a killed evaluation's half-written files
            stale.unlink()
    state.wait_for_everyone()

    paths = image_paths(folder, prompts, request.n)
    done = {r["index"] for path in score_files(folder) for r in read_jsonl(path)}
    todo = [i for i in range(total) if i not in done]
    batches = [todo[start:start + request.batch] for start in range(0, len(todo), request.batch)]
    lines_file = folder / ("scores.jsonl" if world == 1 else f"scores.part{rank}.jsonl")
    bar = tqdm(total=total, initial=total - len(todo), desc=f"eval {run.id}", unit="img",
               disable=not (progress and state.is_main_process))
    for number, indices in enumerate(batches):
        if number % world != rank:
            continue
        prompt_ids = [i // request.n for i in indices]
        texts = [prompts.prompts[p] for p in prompt_ids]
        images, pil, scores = source.generate(indices, prompt_ids, texts, request.seed, folder)
        images = images.to(state.device)
        scores = {**scores, **{name: scorer.score(images, texts) for name, scorer in scorers.items()}}
        scores = {name: torch.as_tensor(values).float().cpu().tolist() for name, values in scores.items()}
        # Images first, score lines last: a line in a scores file means its image is complete.
        for i, picture in zip(indices, pil, strict=True):
            path = paths[i]
            path.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG" if path.suffix == ".jpg" else "PNG", quality=95)
            atomic_write_bytes(path, buffer.getvalue())
        with open(lines_file, "a") as handle:
            for k, i in enumerate(indices):
                line = {"index": i, "caption": texts[k], "seed": request.seed,
                        "image": paths[i].relative_to(folder).as_posix(),
                        **{name: float(values[k]) for name, values in scores.items()}}
                handle.write(json.dumps(line) + "\n")
        bar.update(sum(len(batch) for batch in batches[number:number + world]))  # this round, every process
    bar.close()
    state.wait_for_everyone()
    if not state.is_main_process:
        return run, None

    lines = merge_scores(folder)
    metrics, rows = source.exact_metrics(folder, total, request.n, request.seed)
    names = [key for key in lines[0] if key not in ("index", "caption", "seed", "image")]
    metrics |= {name: sum(r[name] for r in lines) / len(lines) for name in names if name not in metrics}
    rows = rows if rows is not None else per_prompt_means(lines, names)
    if fid:
        metrics["fid"] = fid_of(folder, fid, request, store.root, progress)
    summary = {"run": run.id, "eval_id": request.eval_id, "protocol": protocol, "metrics": metrics,
               "per_prompt": rows, "provenance": provenance(run.config, "cpu"), "processes": world}
    if request.protocol:
        from bench.eval.protocols import markdown, table

        summary["table"] = table(request.protocol, metrics, lines)
        atomic_write_bytes(folder / "table.md", markdown(request.protocol, run.id, summary["table"]).encode())
    atomic_write_json(folder / "summary.json", summary)
    store.index_eval(run, summary)
    return run, summary


def score_files(folder: Path) -> list[Path]:
    """scores.jsonl and the part files of processes that have not been merged yet (a killed launch's)."""
    return [folder / "scores.jsonl", *sorted(folder.glob("scores.part*.jsonl"))]


def merge_scores(folder: Path) -> list[dict]:
    """Every score line, one an image in index order; the part files folded into scores.jsonl (written whole
    first, then the parts removed: a crash in between leaves lines twice, which the next merge drops)."""
    parts = score_files(folder)[1:]
    lines = sorted({r["index"]: r for path in score_files(folder) for r in read_jsonl(path)}.values(),
                   key=lambda r: r["index"])
    if parts:
        atomic_write_bytes(folder / "scores.jsonl", "".join(json.dumps(r) + "\n" for r in lines).encode())
        for path in parts:
            path.unlink()
    return lines


def per_prompt_means(lines: list[dict], names: list[str]) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for line in lines:
        groups.setdefault(line["caption"], []).append(line)
    return [{"caption": caption, **{n: sum(r[n] for r in group) / len(group) for n in names}}
            for caption, group in groups.items()]


def fid_setup(request: EvalRequest, device: torch.device) -> dict:
    from bench.eval.fid import PROTOCOL, Inception, locate_inception

    return {"protocol": PROTOCOL, "inception": Inception(locate_inception(request.inception), device,
                                                          request.inception_sha256)}


def fid_of(folder: Path, fid: dict, request: EvalRequest, store_root: Path, progress: bool) -> float:
    from bench.eval.fid import features, frechet_distance, image_files, reference_statistics, statistics

    mu_ref, sigma_ref, _ = reference_statistics(request.fid_ref, fid["inception"], store_root, request.fid_resize,
                                                progress)
    mu, sigma = statistics(features(image_files(folder / "images"), fid["inception"], request.fid_resize,
                                    progress=progress))
    if mu.shape != mu_ref.shape:
        raise UsageError(f"FID reference {request.fid_ref} has {mu_ref.shape[0]}-d statistics but the Inception "
                         f"file gives {mu.shape[0]}-d features; compute both with the same inception=")
    return frechet_distance(mu, sigma, mu_ref, sigma_ref)
