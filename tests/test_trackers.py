"""Experiment trackers: what a tracker shows is what the run's metrics.jsonl holds, read back from the tracker's
own files."""

import contextlib
import json
import signal
import sqlite3
import struct

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


def wandb_records(path):
    """The records of a W&B offline run file: LevelDB's log format (32 KiB blocks of chunks, each with a 7-byte
    header: checksum, length, kind 1 whole / 2 first / 3 middle / 4 last) after W&B's 7-byte file header, each
    record one protobuf `Record`. wandb ships the protobuf classes but no reader."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, pieces = 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if left < 7 or (kind == 0 and length == 0):  # the rest of a block is padding
            position += left
            continue
        pieces += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


def wandb_read_back(run_dir):
    """Every offline W&B run under the run's trackers folder (one a start): their scalars by step, the steps of
    their sample images, their configuration and their (id, name, project)."""
    scalars, images, config, ids = {}, [], {}, set()
    for path in sorted((run_dir / "trackers" / "wandb").glob("offline-run-*/run-*.wandb")):
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.add((record.run.run_id, record.run.display_name, record.run.project))
                config |= {item.key: json.loads(item.value_json) for item in record.run.config.update}
            elif kind == "config":
                config |= {item.key: json.loads(item.value_json) for item in record.config.update}
            elif kind == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                       for item in record.history.item}
                step = row.pop("_step")
                images += [step] if "samples/_type" in row else []
                for key, value in row.items():
                    if "/" in key and not key.startswith("samples/"):
                        scalars.setdefault(key, {})[step] = value
    return scalars, images, config, ids


def trackio_read_back(results, name, monkeypatch):
    """trackio's own storage reader, pointed at the results store's trackio folder."""
    from trackio import sqlite_storage

    monkeypatch.setattr(sqlite_storage, "TRACKIO_DIR", results / "trackio")
    scalars, images = {}, []
    for row in sqlite_storage.SQLiteStorage.get_logs("bench", name):
        images += [row["step"]] if "samples" in row else []
        for key, value in row.items():
            if "/" in key:
                scalars.setdefault(key, {})[row["step"]] = value
    return scalars, images, sqlite_storage.SQLiteStorage.get_run_config("bench", name)


def trackio_holds(results, name, step, monkeypatch) -> bool:
    """Whether trackio's database already holds the evaluation of `step`, its reward and its sample grid."""
    try:
        scalars, images, _ = trackio_read_back(results, name, monkeypatch)
    except Exception:  # not created yet, or mid-write: ask again
        return False
    return step in scalars.get("eval/reward", {}) and step in images


def read_back(tracker, results, run_dir, monkeypatch):
    """What the tracker holds for the run: {key: {step: value}}, the steps of its sample images, its parameters."""
    if tracker == "tensorboard":
        scalars, images = tensorboard_scalars(run_dir / "trackers" / run_dir.name)  # the store's run id names it
        return scalars, images.get("samples", []), None
    if tracker == "mlflow":
        client, run = mlflow_run(results, run_dir.name)
        scalars = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
                   for key in run.data.metrics}
        images = client.list_artifacts(run.info.run_id, "images")
        steps = [int(f.path.split("+step+")[1].split("+")[0]) for f in images if f.path.endswith(".png")]
        return scalars, steps, run.data.params
    if tracker == "wandb":
        scalars, images, config, ids = wandb_read_back(run_dir)
        assert ids == {(run_dir.name, run_dir.name, "bench")}  # the store's run id is W&B's id and name
        return scalars, images, config
    return trackio_read_back(results, run_dir.name, monkeypatch)


OPENERS = {"tensorboard": "tensorboard --logdir", "mlflow": "mlflow ui --backend-store-uri", "wandb": "wandb sync",
           "trackio": "trackio show --project bench"}


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """One run mirrored to every tracker at once: the results store, the run's folder, what it printed."""
    results = tmp_path_factory.mktemp("mirrored") / "results"
    proc = bench("run", "method=di_pp", "train.steps=20", "train.eval_every=10", "train.log_every=5",
                 "backend.hidden=32", "eval.samples=64", "tracker=tensorboard,mlflow,wandb,trackio", results=results,
                 check=True)
    (run_dir,) = (results / "runs").iterdir()
    return results, run_dir, proc.stderr


@pytest.mark.parametrize("tracker", list(OPENERS))
def test_a_tracker_shows_every_record_of_the_run_at_its_step(tracker, mirrored, monkeypatch):
    results, run_dir, printed = mirrored
    (where,) = [line for line in printed.splitlines() if line.startswith("tracker logs: ")]
    assert OPENERS[tracker] in where  # one line says where the logs went and how to open them
    scalars, images, params = read_back(tracker, results, run_dir, monkeypatch)
    records = read_jsonl(run_dir / "metrics.jsonl")
    compared = 0
    for record in records:
        for key, value in record.items():
            if key in ("kind", "step") or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            assert scalars[f"{record['kind']}/{key}"][record["step"]] == pytest.approx(value, rel=1e-6), key
            compared += 1
    assert compared > 50 and {r["kind"] for r in records} == {"train", "eval"}
    assert sorted(images) == [r["step"] for r in records if r["kind"] == "eval"]  # a grid an evaluation
    summary = json.loads((run_dir / "summary.json").read_text())
    assert scalars["summary/reward"][20] == pytest.approx(summary["metrics"]["reward"], rel=1e-6)
    if params is not None:  # the resolved configuration as hyperparameters (TensorBoard keeps them apart)
        assert str(params["method.name"]) == "di_pp" and str(params["train.steps"]) == "20"


def test_an_unknown_tracker_is_one_line_before_training(capsys, results, monkeypatch):
    monkeypatch.setenv("BENCH_RESULTS", str(results))
    assert main(["run", "tracker=tensorboard,foo"]) == 2
    err = capsys.readouterr().err
    assert "unknown tracker 'foo'; choose from: tensorboard, mlflow, wandb, trackio" in err
    assert "Traceback" not in err and not results.exists()


@pytest.mark.parametrize("tracker", ["mlflow", "trackio"])
def test_a_tracker_database_that_cannot_be_written_is_one_line_before_training(tracker, capsys, results, monkeypatch):
    results.mkdir()
    (results / tracker).write_text("not a folder")
    monkeypatch.setenv("BENCH_RESULTS", str(results))
    monkeypatch.delenv("TRACKIO_DIR", raising=False)
    assert main(["run", f"tracker={tracker}", "train.steps=1"]) == 2
    err = capsys.readouterr().err
    where = results / tracker
    assert f"tracker={tracker} keeps its database in {where}, but {where} is not a folder" in err
    assert not (results / "runs").exists()  # nothing written


def test_a_tracker_whose_package_is_missing_says_how_to_install_it(capsys, results, monkeypatch):
    import bench.train.trackers as trackers

    monkeypatch.setenv("BENCH_RESULTS", str(results))
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None)
    assert main(["run", "tracker=tensorboard", "train.steps=1"]) == 2
    err = capsys.readouterr().err
    assert 'needs the tensorboard package, which is not installed: pip install -e ".[trackers]"' in err
    assert not results.exists()  # refused before the run has a folder: nothing half-written


def test_a_finished_run_exported_shows_what_a_live_mirror_shows(results, monkeypatch):
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
    bench("runs", "export", later.name, "--to", "mlflow,wandb,trackio", results=results, check=True)
    rewards = {r["step"]: r["reward"] for r in read_jsonl(later / "metrics.jsonl") if r["kind"] == "eval"}
    for tracker in ("mlflow", "wandb", "trackio"):
        scalars, images, _ = read_back(tracker, results, later, monkeypatch)
        assert scalars["eval/reward"] == pytest.approx(rewards, rel=1e-6) and sorted(images) == sorted(rewards)
    again = bench("runs", "export", later.name, "--to", "wandb", results=results)
    assert again.returncode == 2 and "was already sent to wandb" in again.stderr


def mlflow_run(results, name: str):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("bench").experiment_id],
                                filter_string=f"tags.mlflow.runName = '{name}'")
    return client, run


def test_a_resumed_run_continues_the_same_tracker_runs(results, monkeypatch):
    """Killed after its step-100 evaluation and resumed: one run in each tracker (W&B: two offline starts of one run
    id, which `wandb sync` joins), holding every evaluation of the finished run."""
    args = ["run", "method=di_star", "preset=smoke", "train.steps=300", "train.ckpt_every=50", "train.eval_every=100",
            "tracker=tensorboard,mlflow,wandb,trackio"]
    proc = bench_process(*args, results=results)
    run_dir = wait_until(lambda: next((results / "runs").glob("*"), None) if (results / "runs").exists() else None,
                         proc=proc)
    wait_until(lambda: any(r.get("step", 0) >= 130 for r in read_jsonl(run_dir / "metrics.jsonl")), proc=proc)
    # trackio writes its queue from a thread every half second, so a kill within that window loses those records
    # (one CI run in three killed it before the step-100 evaluation was written). Wait for them, then take them out
    # of its database: the resumed run must send them again.
    wait_until(lambda: trackio_holds(results, run_dir.name, 100, monkeypatch), proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with contextlib.closing(sqlite3.connect(results / "trackio" / "bench.db")) as db, db:
        assert db.execute("DELETE FROM metrics WHERE run_name = ? AND step = 100", (run_dir.name,)).rowcount >= 2
    assert not trackio_holds(results, run_dir.name, 100, monkeypatch)
    bench("run", "resume=latest", results=results, check=True)
    evals = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals == [0, 100, 200, 300]
    for tracker in ("tensorboard", "mlflow", "wandb", "trackio"):  # mlflow_run: exactly one run of that name
        scalars, images, _ = read_back(tracker, results, run_dir, monkeypatch)
        assert sorted(scalars["eval/reward"]) == evals and sorted(set(images)) == evals, tracker
    assert sorted(read_back("trackio", results, run_dir, monkeypatch)[1]) == evals  # each grid once
    _, run = mlflow_run(results, run_dir.name)
    assert (run_dir / "trackers" / "mlflow_run_id").read_text() == run.info.run_id and run.info.status == "FINISHED"
    assert len(list((run_dir / "trackers" / "wandb").glob("offline-run-*"))) == 2  # a start each, one id (read_back)
