"""Bad input gets one line that says what to do, exit code 2, no traceback, and no run in the store."""

import pytest

from bench.cli import main

from conftest import bench

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
    (["run", "reward={hpsv2: high}"], "reward weight of hpsv2 must be a number, got 'high'"),
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
    (["runs", "list", "status=done"], "status=done is not a run status; use one of running, finished, failed, pruned"),
    (["frobnicate"], "unknown command 'frobnicate'"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_invocation(argv, message, results, capsys):
    code = main([*argv, f"results.dir={results}"] if argv[0] in ("run", "runs") else argv)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("bench: error: ")
    assert not (results / "runs").exists() or not any((results / "runs").iterdir())


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
