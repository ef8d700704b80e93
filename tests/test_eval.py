"""`bench eval` on analytic-world runs: protocol, per-image scores, resume, determinism, errors."""

import json
import shutil
import signal

import pytest
import torch

from bench.cli import main
from bench.config import build_config
from bench.store import Store
from bench.store.files import read_jsonl

from conftest import bench, bench_process, wait_until

PROTOCOL_KEYS = {"prompt_set", "images", "resolution", "resize", "metrics", "generator", "checkpoint_step",
                 "checkpoint_sha256", "backend", "world"}


@pytest.fixture
def trained(results):
    assert main(["run", "preset=smoke", f"results.dir={results}"]) == 0
    return Store(results).rows()[0]["id"]


def eval_dir(results, run_id, eval_id):
    return results / "runs" / run_id / "evals" / eval_id


def test_eval_writes_images_scores_and_a_summary_with_the_full_protocol(results, trained, capsys):
    assert main(["eval", f"run={trained}", "n=16", "seed=3", f"results.dir={results}"]) == 0
    assert "evaluation analytic-n16-seed3" in capsys.readouterr().out
    folder = eval_dir(results, trained, "analytic-n16-seed3")
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["protocol"]) == PROTOCOL_KEYS
    assert summary["protocol"]["prompt_set"] == {"name": "analytic", "version": summary["protocol"]["prompt_set"]
                                                 ["version"], "size": 8, "per_prompt": 16, "seed": 3}
    assert summary["protocol"]["checkpoint_sha256"] == json.loads(
        (results / "runs" / trained / "summary.json").read_text())["checkpoint_sha256"]
    assert set(summary["provenance"]) >= {"packages", "git", "python"}
    scores = [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]
    assert sorted(s["index"] for s in scores) == list(range(128))
    assert len(list((folder / "images").glob("*.png"))) == 128
    mean_reward = sum(s["reward"] for s in scores) / len(scores)
    assert summary["metrics"]["reward"] == pytest.approx(mean_reward, rel=1e-5)
    assert len(summary["per_prompt"]) == 8 and summary["per_prompt"][0]["caption"] == "a red circle"
    (row,) = Store(results).evals()
    assert row["run_id"] == trained and json.loads(row["metrics"]) == summary["metrics"]


def test_interrupted_eval_resumes_without_redoing_finished_images(results, trained, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(results, twin)
    args = ["eval", f"run={trained}", "n=256", "batch=16"]
    proc = bench_process(*args, results=results)
    scores = eval_dir(results, trained, "analytic-n256-seed0") / "scores.jsonl"
    wait_until(lambda: len(read_jsonl(scores)) >= 64, proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    scored = {r["index"] for r in read_jsonl(scores)}
    assert 0 < len(scored) < 2048, "the evaluation must be interrupted part-way"
    images = eval_dir(results, trained, "analytic-n256-seed0") / "images"
    stamps = {i: (images / f"{i:05d}.png").stat().st_mtime_ns for i in scored}

    bench(*args, results=results, check=True)
    assert all((images / f"{i:05d}.png").stat().st_mtime_ns == stamps[i] for i in scored)
    indices = [json.loads(line)["index"] for line in scores.read_text().splitlines()]
    assert sorted(indices) == list(range(2048))

    # The same evaluation in one go (in a copy of the store, batch size changed too) gives the same numbers.
    assert main(["eval", f"run={trained}", "n=256", "batch=500", f"results.dir={twin}"]) == 0
    resumed = json.loads((eval_dir(results, trained, "analytic-n256-seed0") / "summary.json").read_text())
    whole = json.loads((eval_dir(twin, trained, "analytic-n256-seed0") / "summary.json").read_text())
    assert resumed["metrics"] == whole["metrics"]


@pytest.mark.parametrize("args, message", [
    (["run=nope"], "no run 'nope' in"),
    (["run=latest", "prompts=coco"], "prompt set 'coco' is not available"),
    (["run=latest", "n=0"], "n must be a whole number of at least 2, got '0'"),
    (["run=latest", "batch=x"], "batch must be a whole number of at least 1, got 'x'"),
    (["run=latest", "images=3"], "bench eval takes run=, prompts=, n=, seed=, batch=, got 'images=3'"),
    (["n=4"], "bench eval needs run=ID"),
])
def test_bad_eval_invocations(results, trained, capsys, args, message):
    assert main(["eval", *args, f"results.dir={results}"]) == 2
    assert message in capsys.readouterr().err


def test_eval_refuses_to_mix_protocols_after_the_checkpoint_changes(results, trained, capsys):
    assert main(["eval", f"run={trained}", "n=2", f"results.dir={results}"]) == 0
    assert main(["eval", f"run={trained}", "n=2", f"results.dir={results}"]) == 0  # same protocol: a no-op
    checkpoint = results / "runs" / trained / "checkpoints" / "latest.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["ema"] = {k: v + 0.01 for k, v in state["ema"].items()}
    torch.save(state, checkpoint)
    capsys.readouterr()
    assert main(["eval", f"run={trained}", "n=2", f"results.dir={results}"]) == 2
    assert "holds an evaluation under another protocol" in capsys.readouterr().err


def test_eval_at_the_training_seed_reproduces_the_runs_own_final_evaluation(results, trained):
    """One definition of evaluation noise: `bench eval` with the run's eval seed and size sees its images."""
    run = Store(results).get(trained)
    cfg = build_config(["preset=smoke"])
    per_caption = cfg.eval.samples // cfg.world.prompts
    assert main(["eval", f"run={trained}", f"n={per_caption}", f"seed={cfg.eval.seed}",
                 f"results.dir={results}"]) == 0
    evaluated = json.loads((eval_dir(results, trained, f"analytic-n{per_caption}-seed{cfg.eval.seed}")
                            / "summary.json").read_text())
    for key, value in run.summary["metrics"].items():
        assert evaluated["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-7), key
