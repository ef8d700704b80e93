"""`bench eval` on analytic-world runs and diffusers pipelines: protocol, per-image scores, resume, errors."""

import json
import shutil
import signal
import subprocess

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from bench.cli import main
from bench.config import build_config
from bench.prompts import HPS_STYLES
from bench.provenance import file_sha256
from bench.rewards import SCORERS
from bench.store import Store
from bench.store.files import read_jsonl
from bench.train.checkpoint import EMA_FILE

from conftest import ROOT, bench, bench_env, bench_process, kill_tree, launched, wait_until
from random_weights import write_inception, write_weights
from tiny_pipelines import tiny_sd15

PROTOCOL_KEYS = {"prompt_set", "images", "resolution", "resize", "metrics", "scorer_resize", "fid", "generator",
                 "checkpoint_step", "checkpoint_sha256", "backend", "own_metrics"}


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
    (["run=latest", "prompts=coco"], "so it is evaluated on prompts=analytic (got prompts=coco)"),
    (["run=latest", "n=0"], "n must be a whole number of at least 1, got '0'"),
    (["run=latest", "n=1"], "n must be at least 2 for an analytic-world run"),
    (["run=latest", "subset=3"], "drop subset="),
    (["run=latest", "metrics=hps"], "metrics: unknown scorer 'hps'; did you mean 'hpsv2'?"),
    (["run=latest", "metrics=aesthetic", "weights=/nonexistent"],
     "aesthetic: config.json, model.safetensors not found in /nonexistent/aesthetic/model"),
    (["run=latest", "fid_ref=/nonexistent/ref", "inception=/nonexistent/i.pt"],
     "FID needs the Inception weights inception-2015-12-05.pt; looked in /nonexistent/i.pt"),
    (["pipeline=/nonexistent/pipe"], "/nonexistent/pipe is not a diffusers pipeline folder (no model_index.json"),
    (["run=latest", "pipeline=x"], "bench eval needs run=ID"),
    (["run=latest", "batch=x"], "batch must be a whole number of at least 1, got 'x'"),
    (["run=latest", "images=3"], "bench eval takes run=, pipeline=, prompts=, n=, subset=, seed=, batch=, metrics="),
    (["n=4"], "bench eval needs run=ID"),
])
def test_bad_eval_invocations(results, trained, capsys, args, message):
    assert main(["eval", *args, f"results.dir={results}"]) == 2
    assert message in capsys.readouterr().err


def test_an_unreachable_hub_pipeline_is_one_line(results, capsys, hub_unreachable):
    """A hub id resolves through the cache; a miss there (stubbed: no hub here) names the fix."""
    assert main(["eval", "pipeline=nobody/no-such-model", f"results.dir={results}"]) == 2
    err = capsys.readouterr().err
    assert "pipeline nobody/no-such-model is not in the Hugging Face cache" in err and "--local-dir DIR" in err
    assert err.count("\n") == 1


def test_eval_refuses_to_mix_protocols_after_the_checkpoint_changes(results, trained, capsys):
    assert main(["eval", f"run={trained}", "n=2", f"results.dir={results}"]) == 0
    assert main(["eval", f"run={trained}", "n=2", f"results.dir={results}"]) == 0  # same protocol: a no-op
    ema_file = results / "runs" / trained / "checkpoints" / "latest" / EMA_FILE
    save_file({k: v + 0.01 for k, v in load_file(ema_file).items()}, ema_file)
    capsys.readouterr()
    assert main(["eval", f"run={trained}", "n=2", f"results.dir={results}"]) == 2
    assert "holds an evaluation under another protocol" in capsys.readouterr().err


def test_eval_at_the_training_seed_reproduces_the_runs_own_final_evaluation(results, trained):
    """One definition of evaluation noise: `bench eval` with the run's eval seed and size sees its images."""
    run = Store(results).get(trained)
    cfg = build_config(["preset=smoke"])
    per_caption = cfg.eval.samples // cfg.backend.prompts
    assert main(["eval", f"run={trained}", f"n={per_caption}", f"seed={cfg.eval.seed}",
                 f"results.dir={results}"]) == 0
    evaluated = json.loads((eval_dir(results, trained, f"analytic-n{per_caption}-seed{cfg.eval.seed}")
                            / "summary.json").read_text())
    for key, value in run.summary["metrics"].items():
        assert evaluated["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-7), key


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    write_weights(root / "weights")
    write_inception(root / "inception.pt")
    reference = root / "reference"
    reference.mkdir()
    for i in range(12):
        pixels = np.random.default_rng(i).integers(0, 256, (16, 16, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(reference / f"{i:05d}.png")
    return {"pipeline": tiny_sd15(root), "weights": root / "weights", "inception": root / "inception.pt",
            "reference": reference}


def test_eval_of_a_diffusers_pipeline_with_every_scorer_and_fid(results, assets, capsys):
    args = ["eval", f"pipeline={assets['pipeline']}", "prompts=builtin", "subset=8", "seed=1", "batch=3",
            f"metrics={','.join(SCORERS)}", f"weights={assets['weights']}", f"fid_ref={assets['reference']}",
            f"inception={assets['inception']}", f"inception_sha256={file_sha256(assets['inception'])}",
            f"results.dir={results}"]
    assert main(args) == 0
    (row,) = Store(results).rows()
    assert row["id"].startswith("pipeline-sd15-") and row["method"] == "external" and row["status"] == "finished"
    folder = eval_dir(results, row["id"], "builtin-n1-sub8-seed1")
    summary = json.loads((folder / "summary.json").read_text())
    protocol = summary["protocol"]
    assert protocol["prompt_set"]["name"] == "builtin[n=8,seed=1]" and protocol["images"] == 8
    assert protocol["scheduler"] == "EulerDiscreteScheduler" and protocol["steps"] == 1
    assert set(protocol["metrics"]) == set(SCORERS)
    assert all(len(sha) == 64 for info in protocol["metrics"].values() for sha in info["weights_sha256"].values())
    assert protocol["fid"]["inception_sha256"] == file_sha256(assets["inception"])
    assert set(summary["metrics"]) == {*SCORERS, "fid"} and summary["metrics"]["fid"] > 0
    assert set(summary["provenance"]["packages"]) >= {"diffusers", "transformers"}
    # hpsv2.evaluate's layout: one folder a style, images numbered within it.
    saved = sorted(p.relative_to(folder / "images").as_posix() for p in (folder / "images").rglob("*.jpg"))
    assert len(saved) == 8 and all(s.split("/")[0] in HPS_STYLES and s.endswith(".jpg") for s in saved)
    assert {s.split("/")[1] for s in saved} >= {"00000.jpg"}
    lines = read_jsonl(folder / "scores.jsonl")
    assert summary["metrics"]["pickscore"] == pytest.approx(sum(r["pickscore"] for r in lines) / 8, rel=1e-6)

    # Cut the last three score lines (a crash mid-batch): the rerun redoes those images only, same numbers.
    kept = (folder / "scores.jsonl").read_text().splitlines()[:5]
    (folder / "scores.jsonl").write_text("\n".join(kept) + "\n")
    stamps = {p: p.stat().st_mtime_ns for p in (folder / "images").rglob("*.jpg")}
    assert main(args) == 0
    changed = [p for p, stamp in stamps.items() if p.stat().st_mtime_ns != stamp]
    assert len(changed) == 3
    again = json.loads((folder / "summary.json").read_text())
    assert again["metrics"] == pytest.approx(summary["metrics"], rel=1e-5)
    assert len(Store(results).rows()) == 1  # the pipeline's run entry is reused


def test_leaderboard_shows_a_pipeline_evaluation_with_its_scores(results, assets, monkeypatch):
    from streamlit.testing.v1 import AppTest

    assert main(["eval", f"pipeline={assets['pipeline']}", "subset=2", "metrics=hpsv2,pickscore",
                 f"weights={assets['weights']}", f"results.dir={results}"]) == 0
    monkeypatch.setenv("BENCH_RESULTS", str(results))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60).run()
    assert not at.exception
    (table,) = [t.value for t in at.dataframe if "eval" in t.value.columns]
    assert list(table["method"]) == ["external pipeline"] and table["eval"].iloc[0] == "builtin-n1-sub2-seed0"
    assert {"hpsv2", "pickscore"} <= set(table.columns)
    subheaders = " ".join(str(h.value) for h in at.subheader).replace("\\", "")  # shown text is markdown-escaped
    assert "diffusers pipeline | prompts builtin[n=2,seed=0]" in subheaders and "hpsv2 2.0" in subheaders


def test_eval_of_an_analytic_run_adds_image_scorers_to_the_exact_metrics(results, trained, assets):
    assert main(["eval", f"run={trained}", "n=2", "metrics=aesthetic,clip_score", f"weights={assets['weights']}",
                 f"results.dir={results}"]) == 0
    summary = json.loads((eval_dir(results, trained, "analytic-n2-seed0") / "summary.json").read_text())
    assert {"aesthetic", "clip_score", "reward", "nll_ref", "mmd_star"} <= set(summary["metrics"])
    assert summary["protocol"]["metrics"]["aesthetic"]["version"].startswith("v2")


def test_a_pipelines_own_name_cannot_place_its_entry_outside_the_store(results, assets, tmp_path):
    """one_step.json names the run a pipeline came from; a name such as ../../x must stay a name."""
    folder = tmp_path / "exported"
    shutil.copytree(assets["pipeline"], folder)
    (folder / "one_step.json").write_text(json.dumps({"run": "../../escape"}))
    assert main(["eval", f"pipeline={folder}", "prompts=builtin", "subset=1", f"results.dir={results}"]) == 0
    (row,) = Store(results).rows()
    assert row["id"].startswith("pipeline-escape-")
    assert (results / "runs" / row["id"]).is_dir()
    assert not list(tmp_path.rglob("*escape*")) or all(results in p.parents for p in tmp_path.rglob("*escape*"))


def hps_benchmark(folder, per_style=2):
    folder.mkdir()
    for style in ("anime", "concept-art", "paintings", "photo"):
        (folder / f"{style}.json").write_text(json.dumps([f"a {style} picture number {i}" for i in range(per_style)]))
    return folder


def test_the_hpsv2_benchmark_protocol_scores_each_style_and_their_mean_as_its_leaderboard_does(results, assets,
                                                                                               tmp_path, capsys):
    prompts = hps_benchmark(tmp_path / "hps")
    assert main(["eval", f"pipeline={assets['pipeline']}", "protocol=hpsv2-benchmark", f"prompts=hps_v2:{prompts}",
                 f"weights={assets['weights']}", f"results.dir={results}"]) == 0
    (evaluation,) = Store(results).evals()
    folder = Store(results).get(evaluation["run_id"]).dir / "evals" / evaluation["eval_id"]
    assert evaluation["eval_id"] == "hpsv2-benchmark-n1-seed0"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["protocol"]["name"] == "hpsv2-benchmark"
    assert set(summary["protocol"]["metrics"]) == {"hpsv2.1"} and summary["protocol"]["prompt_set"]["per_prompt"] == 1
    lines = [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]
    by_style = {}
    for line in lines:
        style = next(s for s in ("anime", "concept-art", "paintings", "photo") if f"a {s} picture" in line["caption"])
        by_style.setdefault(style, []).append(line["hpsv2.1"])
    means = {s: sum(v) / len(v) for s, v in by_style.items()}
    assert summary["table"]["columns"] == ["Animation", "Concept-art", "Painting", "Photo", "Averaged"]
    table = dict(zip(summary["table"]["columns"], summary["table"]["row"], strict=True))
    for column, style in zip(table, ("anime", "concept-art", "paintings", "photo"), strict=False):
        assert table[column] == pytest.approx(means[style])
    assert table["Averaged"] == pytest.approx(sum(means.values()) / 4)
    assert "as in the paper (hpsv2-benchmark): Animation" in capsys.readouterr().out
    assert (folder / "table.md").read_text().startswith("| hpsv2-benchmark | Animation | Concept-art |")


@pytest.mark.parametrize("extra, message", [
    (["protocol=hpsv2", "prompts=hps_v2:X"], "protocol=hpsv2 is not valid; choose from: coco, hpsv2-benchmark, parti"),
    (["protocol=parti", "prompts=parti:X", "metrics=hpsv2"], "protocol=parti fixes metrics; drop metrics="),
    (["protocol=parti"], "protocol=parti reads its prompts from your copy of them: add prompts=parti:PATH"),
    (["protocol=coco", "prompts=coco:X"], "protocol=coco includes FID: add fid_ref=FOLDER_OR_NPZ"),
])
def test_a_protocol_refuses_what_would_make_it_another_protocol(results, assets, capsys, extra, message):
    assert main(["eval", f"pipeline={assets['pipeline']}", *extra, f"results.dir={results}"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_named_protocol_puts_the_papers_rows_beside_ours_on_the_leaderboard(results, assets, tmp_path,
                                                                             monkeypatch):
    from streamlit.testing.v1 import AppTest

    prompts = hps_benchmark(tmp_path / "hps", per_style=1)
    assert main(["eval", f"pipeline={assets['pipeline']}", "protocol=hpsv2-benchmark", f"prompts=hps_v2:{prompts}",
                 f"weights={assets['weights']}", f"results.dir={results}"]) == 0
    reported = tmp_path / "reported.yaml"
    reported.write_text("""
- {method: di_star, source: "a paper, Table 1", protocol: {name: hpsv2-benchmark}, metrics: {hpsv2.1: 31.0}}
- {method: di_pp, source: "another protocol", protocol: {name: parti}, metrics: {pickscore: 22.0}}
""")
    monkeypatch.setenv("BENCH_RESULTS", str(results))
    monkeypatch.setenv("BENCH_REPORTED", str(reported))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60).run()
    assert not at.exception
    (table,) = [t.value for t in at.dataframe if "eval" in t.value.columns]
    assert list(table["status"]) == ["measured", "reported"]
    assert table["run"].iloc[1] == "a paper, Table 1" and table["hpsv2.1"].iloc[1] == 31.0
    assert "protocol hpsv2-benchmark" in " ".join(str(h.value) for h in at.subheader).replace("\\", "")


def same_files(a, b) -> bool:
    """The same relative paths with the same bytes in two folders."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        (a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_an_evaluation_split_over_two_processes_writes_what_one_process_writes(assets, tmp_path):
    """Images, score lines, scorers and FID under `accelerate launch` with two gloo processes, against one."""
    args = ["eval", f"pipeline={assets['pipeline']}", "prompts=builtin", "subset=6", "n=2", "seed=1", "batch=2",
            "metrics=pickscore,aesthetic", f"weights={assets['weights']}", f"fid_ref={assets['reference']}",
            f"inception={assets['inception']}", f"inception_sha256={file_sha256(assets['inception'])}"]
    two = subprocess.run(launched(2, *args), capture_output=True, text=True, cwd=ROOT,
                         env=bench_env(tmp_path / "two"), timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("evaluation builtin-n2-sub6-seed1") == 1  # the main process reports, once
    bench(*args, results=tmp_path / "one", check=True)
    (run_id,) = [d.name for d in (tmp_path / "one" / "runs").iterdir()]
    one, split = eval_dir(tmp_path / "one", run_id, "builtin-n2-sub6-seed1"), eval_dir(tmp_path / "two", run_id,
                                                                                      "builtin-n2-sub6-seed1")
    assert same_files(one / "images", split / "images") and len(list((one / "images").rglob("*.jpg"))) == 12
    assert (one / "scores.jsonl").read_bytes() == (split / "scores.jsonl").read_bytes()
    assert not list(split.glob("scores.part*"))  # merged
    a, b = (json.loads((folder / "summary.json").read_text()) for folder in (one, split))
    assert a["metrics"] == b["metrics"] and set(a["metrics"]) == {"pickscore", "aesthetic", "fid"}
    assert (a["processes"], b["processes"]) == (1, 2)


def test_a_killed_two_process_evaluation_resumes_to_what_one_process_gives(results, trained, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(results, twin)
    args = ["eval", f"run={trained}", "n=256", "batch=16"]
    folder = eval_dir(results, trained, "analytic-n256-seed0")
    proc = subprocess.Popen(launched(2, *args), cwd=ROOT, env=bench_env(results),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: sum(len(read_jsonl(path)) for path in folder.glob("scores.part*.jsonl")) >= 64, proc=proc)
    kill_tree(proc)  # the launcher and both processes
    parts = {r["index"] for path in folder.glob("scores.part*.jsonl") for r in read_jsonl(path)}
    assert len(list(folder.glob("scores.part*.jsonl"))) == 2 and 0 < len(parts) < 2048
    stamps = {i: (folder / "images" / f"{i:05d}.png").stat().st_mtime_ns for i in parts}

    resumed = subprocess.run(launched(2, *args), capture_output=True, text=True, cwd=ROOT, env=bench_env(results),
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert all((folder / "images" / f"{i:05d}.png").stat().st_mtime_ns == stamps[i] for i in parts)  # not redone
    bench(*args, results=twin, check=True)  # one process, in one go
    whole = eval_dir(twin, trained, "analytic-n256-seed0")
    assert (folder / "scores.jsonl").read_bytes() == (whole / "scores.jsonl").read_bytes()
    assert same_files(folder / "images", whole / "images") and not list(folder.glob("scores.part*"))
    a, b = (json.loads((f / "summary.json").read_text()) for f in (folder, whole))
    assert a["metrics"] == b["metrics"] and a["per_prompt"] == b["per_prompt"]
