"""Experiment trackers: what a tracker shows is what the run's metrics.jsonl holds, read back from the tracker's
own files."""

import json
import signal

import pytest

from bench.cli import main
from bench.store.files import read_jsonl

from conftest import bench, bench_process, wait_until


def tensorboard_scalars(folder) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    images = {tag: [e.step for e in events.Images(tag)] for tag in events.Tags()["images"]}
    return scalars, images


def test_tensorboard_shows_every_record_of_the_run_at_its_step(results):
    proc = bench("run", "method=di_pp", "train.steps=20", "train.eval_every=10", "train.log_every=5",
                 "backend.hidden=32", "eval.samples=64", "tracker=tensorboard", results=results, check=True)
    (run_dir,) = (results / "runs").iterdir()
    assert f"tracker logs: {run_dir / 'trackers'}" in proc.stderr  # one line says where the logs went
    scalars, images = tensorboard_scalars(run_dir / "trackers" / run_dir.name)  # the store's run id is its name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    compared = 0
    for record in records:
        for key, value in record.items():
            if key in ("kind", "step") or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            assert scalars[f"{record['kind']}/{key}"][record["step"]] == pytest.approx(value, rel=1e-6), key
            compared += 1
    assert compared > 50 and {r["kind"] for r in records} == {"train", "eval"}
    assert images["samples"] == [r["step"] for r in records if r["kind"] == "eval"]  # a grid an evaluation
    summary = json.loads((run_dir / "summary.json").read_text())
    assert scalars["summary/reward"][20] == pytest.approx(summary["metrics"]["reward"], rel=1e-6)


@pytest.mark.parametrize("value, message", [
    ("foo", "unknown tracker 'foo'; choose from: tensorboard, mlflow"),
    ("wandb", "tracker=wandb is not wired yet; tensorboard and mlflow are"),
])
def test_a_tracker_that_cannot_serve_is_one_line_before_training(value, message, capsys, results, monkeypatch):
    monkeypatch.setenv("BENCH_RESULTS", str(results))
    assert main(["run", f"tracker={value}"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not results.exists()


def test_an_mlflow_store_that_cannot_be_written_is_one_line_before_training(capsys, results, monkeypatch):
    results.mkdir()
    (results / "mlflow").write_text("not a folder")
    monkeypatch.setenv("BENCH_RESULTS", str(results))
    assert main(["run", "tracker=mlflow", "train.steps=1"]) == 2
    err = capsys.readouterr().err
    assert f"tracker=mlflow keeps its database in {results / 'mlflow'}, but {results / 'mlflow'} is not a folder" in err
    assert not (results / "runs").exists()  # nothing written


def test_a_tracker_whose_package_is_missing_says_how_to_install_it(capsys, results, monkeypatch):
    import bench.train.trackers as trackers

    monkeypatch.setenv("BENCH_RESULTS", str(results))
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None)
    assert main(["run", "tracker=tensorboard", "train.steps=1"]) == 2
    err = capsys.readouterr().err
    assert 'needs the tensorboard package, which is not installed: pip install -e ".[trackers]"' in err
    assert not results.exists()  # refused before the run has a folder: nothing half-written


def test_a_finished_run_exported_shows_what_a_live_mirror_shows(results):
    args = ("run", "method=di_pp", "train.steps=10", "train.eval_every=5", "train.log_every=5", "backend.hidden=32",
            "eval.samples=64")
    bench(*args, "tracker=tensorboard", results=results, check=True)
    bench(*args, results=results, check=True)  # the same run, not mirrored
    live, later = sorted((results / "runs").iterdir(), key=lambda d: (d / "trackers").exists(), reverse=True)
    proc = bench("runs", "export", later.name, "--to", "tensorboard", results=results, check=True)
    assert f"tracker logs: {later / 'trackers'}" in proc.stdout
    assert tensorboard_scalars(later / "trackers" / later.name) == tensorboard_scalars(live / "trackers" / live.name)
    again = bench("runs", "export", later.name, "--to", "tensorboard", results=results)
    assert again.returncode == 2 and "was already sent to tensorboard" in again.stderr  # never doubled
    assert not list(later.glob(".trackers*"))  # no partial folder left
    bench("runs", "export", later.name, "--to", "mlflow", results=results, check=True)
    client, run = mlflow_run(results, later.name)
    rewards = {r["step"]: r["reward"] for r in map(json.loads, (later / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "eval"}
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval/reward")}
    assert history == pytest.approx(rewards, rel=1e-6)


def mlflow_run(results, name: str):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("bench").experiment_id],
                                filter_string=f"tags.mlflow.runName = '{name}'")
    return client, run


def test_mlflow_holds_every_record_the_configuration_and_the_grids_under_the_run_id(results):
    proc = bench("run", "method=kl_rlhf", "train.steps=10", "train.eval_every=5", "train.log_every=5",
                 "backend.hidden=32", "eval.samples=64", "tracker=mlflow", results=results, check=True)
    (run_dir,) = (results / "runs").iterdir()
    assert f"mlflow ui --backend-store-uri sqlite:///{results / 'mlflow' / 'mlflow.db'}" in proc.stderr
    client, run = mlflow_run(results, run_dir.name)
    assert run.data.params["method.name"] == "kl_rlhf" and run.data.params["train.steps"] == "10"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        for key, value in record.items():
            if key in ("kind", "step") or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"{record['kind']}/{key}")}
            assert history[record["step"]] == pytest.approx(value, rel=1e-6), key
    images = client.list_artifacts(run.info.run_id, "images")
    assert len([f for f in images if f.path.endswith(".png")]) == len([r for r in records if r["kind"] == "eval"])
    assert (run_dir / "trackers" / "mlflow_run_id").read_text() == run.info.run_id  # what a resume continues


def test_a_resumed_run_continues_the_same_tracker_runs(results):
    """Killed after its step-100 evaluation and resumed: one MLflow run and one TensorBoard run, each with every
    evaluation of the finished run."""
    args = ["run", "method=di_star", "preset=smoke", "train.steps=300", "train.ckpt_every=50", "train.eval_every=100",
            "tracker=tensorboard,mlflow"]
    proc = bench_process(*args, results=results)
    run_dir = wait_until(lambda: next((results / "runs").glob("*"), None) if (results / "runs").exists() else None,
                         proc=proc)
    wait_until(lambda: any(r.get("step", 0) >= 130 for r in read_jsonl(run_dir / "metrics.jsonl")), proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    bench("run", "resume=latest", results=results, check=True)
    evals = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals == [0, 100, 200, 300]
    client, run = mlflow_run(results, run_dir.name)  # exactly one run of that name
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval/reward")) == evals
    scalars, _ = tensorboard_scalars(run_dir / "trackers" / run_dir.name)
    assert sorted(scalars["eval/reward"]) == evals
