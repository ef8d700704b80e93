"""Bad input gets one line that says what to do, exit code 2, no traceback, and no run in the store."""

import pytest

from bench.cli import main

from conftest import ROOT, bench

BAD = [
    (["run", "method=di_sta"], "unknown method 'di_sta'; did you mean 'di_star'?"),
    (["run", "trian.steps=10"], "unknown key 'trian.steps'; did you mean 'train.steps'?"),
    (["run", "method.alpha_rwe=3"], "did you mean 'method.alpha_rew'?"),
    (["run", "train.steps=abc"], "train.steps expects an integer, got 'abc'"),
    (["run", "train.batch_size=1.5"], "train.batch_size expects an integer, got '1.5'"),
    (["run", "train.lr_gen=-1e-3"], "train.lr_gen must be greater than 0, got -0.001"),
    (["run", "method.alpha_cfg=-2"], "method.alpha_cfg must be at least 0, got -2.0"),
    (["run", "method.alpha_rew=nan"], "method.alpha_rew must be a finite number, got 'nan'"),
    (["run", "train.steps=0"], "train.steps must be at least 1, got 0"),
    (["run", "train.ema=1.5"], "train.ema must be less than 1, got 1.5"),
    (["run", "eval.grid=maybe"], "eval.grid expects true or false, got 'maybe'"),
    (["run", "preset=smok"], "unknown preset 'smok'; did you mean 'smoke'?"),
    (["run", "steps"], "expected key=value, got 'steps'"),
    (["run", "train.steps=10", "train.steps=20"], "'train.steps' is given twice (10 and 20); keep one"),
    (["run", "method.t_min=0.9", "method.t_max=0.1"], "method.t_min (0.9) must be below method.t_max (0.1)"),
    (["run", "backend=sd99"], "backend=sd99 is not valid; choose from: analytic"),
    (["run", "reward=redness"], "reward 'redness' is not known; choose from: aesthetic, clip_score, colorfulness"),
    (["run", "reward={hpsv2: high}"], "reward weight of hpsv2 must be a finite number, got 'high'"),
    (["run", "reward={linear: {weight: 1, margn: 0.3}}"], "reward linear takes weight and margin, got margn"),
    (["run", "reward={linear: {margin: .inf}}"], "reward margin of linear must be a finite number, got 'inf'"),
    (["run", "method.alpha_cfg=2", "method.alpha_cfg_max=1.5"],
     "method.alpha_cfg_max (1.5) must be at least method.alpha_cfg (2.0): the scale is drawn from"),
    (["run", "method=dmd", "method.weighting=uniform"], "method=dmd moves x0 by the denoiser difference"),
    (["run", "method=didr", "method.denoise_steps=0"], "method.denoise_steps must be at least 1, got 0"),
    (["run", "backend.shift=3"], "backend.shift=3.0 shifts flow matching's times; VP has none: add backend.path=flow"),
    (["run", "reward=[hpsv2]"], "reward expects a name or a mapping of names to weights"),
    (["run", "reward=hpsv2", "weights=/nonexistent"],
     "hpsv2: weights file HPS_v2_compressed.pt not found at /nonexistent/hpsv2/HPS_v2_compressed.pt; put it in "
     "DIR/hpsv2/ and pass weights=DIR or set BENCH_WEIGHTS=DIR"),
    (["run", "method.estimator=exakt"], "method.estimator=exakt is not valid; did you mean 'exact'?"),
    (["run", "method=kl_rlhf", "method.c=1"], "unknown key 'method.c'"),
    (["run", "method.c=0"], "method.c must be greater than 0, got 0.0"),
    (["run", "device=cuda"], "the analytic world runs on the CPU; use device=cpu"),
    (["run", "device=gpu"], "device=gpu is not a torch device; use cpu, cuda, cuda:N or auto"),
    (["run", "resume=20990101-000000-di_star-abcdef"], "no run '20990101-000000-di_star-abcdef' in"),
    (["run", "resume=latest"], "no runs in"),
    (["run", "method=nosuchmodule:Thing"], "cannot load method 'nosuchmodule:Thing'"),
    (["runs", "show", "nope"], "no run 'nope' in"),
    (["runs", "lst"], "unknown action 'runs lst'; did you mean 'list'?"),
    (["runs", "list", "status=done"],
     "status=done is not a run status; use one of running, interrupted, finished, failed, pruned"),
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["run", "results.dir={file}"], "is a file, not a folder; point results.dir (or BENCH_RESULTS) at a folder"),
    (["runs", "list", "results.dir={file}"], "is a file, not a folder"),
    (["run", "train.steps=²"], "train.steps expects an integer, got '²'"),
    (["sweep", "n_trials=²"], "n_trials must be a whole number of at least 1, got '²'"),
    (["eval", "run=latest", "n=²"], "n must be a whole number of at least 1, got '²'"),
    (["dashboard", "--port", "8٥01"], "--port must be a port number from 1 to 65535, got '8٥01'"),
    (["sweep", "space={dir}/list.yaml"], "search space list.yaml: must be a mapping with the sections"),
    (["sweep", "space={dir}/null_fixed.yaml"], "search space null_fixed.yaml: fixed setting train.steps has no value"),
    (["sweep", "space={dir}/word_objectives.yaml"], "each objective is a mapping such as {metric: reward"),
    (["sweep", "space={dir}/params_list.yaml"], "params must be a mapping, got list"),
    (["sweep", "space={dir}/broken.yaml"], "is not valid YAML"),
    (["sweep", "space=rewrd_vs_cfg"], "unknown search space 'rewrd_vs_cfg'; did you mean 'reward_vs_cfg'?"),
    (["sweep", "storage=journal:{dir}/missing/j.log"], "the folder {dir}/missing does not exist"),
    (["sweep", "status"], "no studies in"),
    (["sweep", "best", "study=x"], "no studies in"),
    (["run", "preset=not_a_mapping"], "must be a mapping of settings"),
    (["run", "preset=empty_value"], "train.steps has no value"),
]
SPACES = {
    "list.yaml": "- objectives\n- params\n",
    "null_fixed.yaml": "objectives: [{metric: reward, direction: maximize}]\n"
                       "params: {method.alpha_rew: {low: 0.1, high: 1}}\nfixed: {train.steps: null}\n",
    "word_objectives.yaml": "objectives: [reward]\nparams: {method.alpha_rew: {low: 0.1, high: 1}}\n",
    "params_list.yaml": "objectives: [{metric: reward}]\nparams: [method.alpha_rew]\n",
    "broken.yaml": "objectives: [\n",
}
PRESETS = {"not_a_mapping.yaml": "- train.steps\n", "empty_value.yaml": "train:\n  steps:\n"}


@pytest.fixture
def bad_files(tmp_path, monkeypatch):
    """Files the bad invocations name: a plain file, malformed search spaces, and presets beside the real ones."""
    import shutil

    import bench.config

    (tmp_path / "plain.txt").write_text("not a folder")
    for name, text in SPACES.items():
        (tmp_path / name).write_text(text)
    presets = tmp_path / "presets"
    shutil.copytree(bench.config.PRESET_DIR, presets)
    for name, text in PRESETS.items():
        (presets / name).write_text(text)
    monkeypatch.setattr(bench.config, "PRESET_DIR", presets)
    return {"file": tmp_path / "plain.txt", "dir": tmp_path}


def fill(text: str, paths: dict) -> str:
    return text.replace("{file}", str(paths["file"])).replace("{dir}", str(paths["dir"]))


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_invocation(argv, message, results, capsys, bad_files):
    argv = [fill(arg, bad_files) for arg in argv]
    given = any(arg.startswith("results.dir=") for arg in argv)
    code = main([*argv, f"results.dir={results}"] if argv[0] in ("run", "runs", "sweep") and not given else argv)
    err = capsys.readouterr().err
    assert code == 2
    assert fill(message, bad_files) in err
    assert err.count("\n") == 1 and err.startswith("bench: error: ")
    assert not (results / "runs").exists() or not any((results / "runs").iterdir())
    assert not (results / "studies.db").exists()  # a refused sweep leaves no study behind


def test_without_network_a_hub_reward_is_refused_within_seconds(results):
    """The hub client alone retries for 27 to 68 s; the suite probes once and answers. The hub here is a local
    port that refuses every connection (bound, never listening) and the cache is empty: nothing is downloaded."""
    import socket
    import time

    with socket.socket() as refusing:
        refusing.bind(("127.0.0.1", 0))
        started = time.perf_counter()
        proc = bench("run", "reward=hpsv2", results=results,
                     env={"HF_HUB_OFFLINE": "", "HF_ENDPOINT": f"http://127.0.0.1:{refusing.getsockname()[1]}",
                          "HF_HOME": str(results / "hf")})
        # 3 s alone on a 2-core machine, mostly importing torch; the bound leaves room for a loaded machine and
        # still fails the hub client's retries.
        assert time.perf_counter() - started < 20
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "not in the Hugging Face cache" in proc.stderr and "huggingface-cli download xswu/HPSv2" in proc.stderr


def test_a_closed_pipe_ends_quietly(results):
    import subprocess
    import sys

    for seed in range(3):
        assert main(["run", "preset=smoke", "train.steps=2", f"seed={seed}", f"results.dir={results}"]) == 0
    listing = subprocess.Popen([sys.executable, "-m", "bench", "runs", "list", "--json", f"results.dir={results}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    listing.stdout.read(10)
    listing.stdout.close()  # what `| head -c 10` does
    assert listing.wait() == 0
    assert b"Traceback" not in listing.stderr.read()


def test_resume_refuses_to_change_a_saved_configuration(results, capsys):
    assert main(["run", "preset=smoke", "train.steps=20", f"results.dir={results}"]) == 0
    run_id = next((results / "runs").iterdir()).name
    (results / "runs" / run_id / "run.json").write_text(
        (results / "runs" / run_id / "run.json").read_text().replace('"finished"', '"failed"'))
    capsys.readouterr()
    assert main(["run", f"resume={run_id}", "method.alpha_rew=5", f"results.dir={results}"]) == 2
    assert "so method.alpha_rew cannot change" in capsys.readouterr().err


def test_finished_run_is_not_resumed(results, capsys):
    assert main(["run", "preset=smoke", "train.steps=20", f"results.dir={results}"]) == 0
    capsys.readouterr()
    assert main(["run", "resume=latest", f"results.dir={results}"]) == 2
    assert "has already finished" in capsys.readouterr().err


def test_a_real_process_prints_no_traceback(results):
    proc = bench("run", "train.lr_gen=-1", results=results)
    assert proc.returncode == 2
    assert proc.stderr == "bench: error: train.lr_gen must be greater than 0, got -1.0\n"
    assert "Traceback" not in proc.stdout + proc.stderr
