"""A run has one writer, and ends marked however it ends: finished, failed with its reason, or interrupted
(stopped by SIGTERM or Ctrl-C, or found dead: SIGKILL, out of memory, a lost machine) and resumable."""

import json
import os
import pickle
import signal

from bench.cli import main
from bench.store import Store

from conftest import bench, bench_process, wait_until

LONG = ["preset=smoke", "train.steps=3000", "train.ckpt_every=10", "backend.image_size=4", "backend.prompts=2"]


def started(results, proc, step=20):
    """The run's folder once it has logged `step` (and so checkpointed at least once)."""
    def logged():
        runs = list((results / "runs").glob("*")) if (results / "runs").exists() else []
        if runs and (runs[0] / "metrics.jsonl").exists():
            records = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines() if line]
            if any(r.get("step", 0) >= step for r in records):
                return runs[0]
        return None
    return wait_until(logged, proc=proc)


def status(results, run_dir):
    return next(r for r in Store(results).rows() if r["id"] == run_dir.name)["status"]


def test_a_killed_run_shows_as_interrupted_and_resumes(results):
    proc = bench_process("run", *LONG, results=results)
    run_dir = started(results, proc)
    assert status(results, run_dir) == "running"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"  # what the dead process left
    assert status(results, run_dir) == "interrupted"  # what every reader shows: nobody holds its writer lock
    listed = bench("runs", "list", results=results, check=True).stdout
    assert "interrupted" in listed and "running" not in listed.splitlines()[1]
    resumed = bench("run", f"resume={run_dir.name}", "train.steps=40", results=results)
    assert resumed.returncode == 2 and "cannot change" in resumed.stderr  # its configuration is its own


def test_sigterm_marks_the_run_interrupted_with_its_step(results):
    proc = bench_process("run", *LONG, results=results)
    run_dir = started(results, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and info["message"].startswith("SIGTERM at step ")


def test_a_live_run_is_not_resumed_twice(results):
    proc = bench_process("run", *LONG, results=results)
    run_dir = started(results, proc)
    second = bench("run", "resume=latest", results=results)
    assert second.returncode == 2
    assert f"run {run_dir.name} is being trained right now (pid {proc.pid} on" in second.stderr
    assert second.stderr.count("\n") == 1
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == sorted(set(steps))  # one writer: no interleaved or repeated records


def test_an_error_marks_the_run_failed_with_its_reason_in_one_line(results, capsys):
    assert main(["run", "method=toy_methods:DiskFills", *LONG, f"results.dir={results}"]) == 1
    (row,) = Store(results).rows()
    assert row["status"] == "failed" and row["message"] == "OSError: [Errno 28] No space left on device"
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err


class Payload:
    """A pickle that runs a command when it is unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_booby_trapped_pickle_in_a_checkpoint_is_never_unpickled(results, tmp_path, capsys):
    """accelerate reads objects registered for checkpointing with full pickle; nothing is registered, the EMA and
    counters are safetensors and JSON, and its RNG pickles are neither kept nor needed."""
    assert main(["run", "preset=smoke", "train.steps=20", "backend.image_size=4", f"results.dir={results}"]) == 0
    run = Store(results).get(Store(results).rows()[0]["id"])
    assert not list(run.checkpoint_dir.glob("*.pkl"))
    marker = tmp_path / "ran"
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "random_states_0.pkl"):
        (run.checkpoint_dir / name).write_bytes(pickle.dumps(Payload(marker)))
    run.update(status="interrupted")
    assert main(["eval", f"run={run.id}", "n=2", f"results.dir={results}"]) == 0
    assert main(["run", f"resume={run.id}", f"results.dir={results}"]) == 2  # refused in one line, unread
    assert "which this suite never writes and will not unpickle" in capsys.readouterr().err
    for trap in run.checkpoint_dir.glob("*.pkl"):
        trap.unlink()
    assert main(["run", f"resume={run.id}", f"results.dir={results}"]) == 0  # restores the checkpoint, finishes
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl"):
        (run.checkpoint_dir / name).write_bytes(pickle.dumps(Payload(marker)))  # init= reads only its own files
    assert main(["run", f"init={run.id}", "preset=smoke", "train.steps=2", "backend.image_size=4",
                 f"results.dir={results}"]) == 0
    assert not marker.exists()


def test_a_run_in_a_log_file_reports_its_progress(results):
    """No terminal, so no bar: a line every BENCH_REPORT_SECONDS with the step, rate, ETA, reward and divergence."""
    proc = bench("run", "preset=smoke", "train.steps=200", "backend.image_size=4", "backend.prompts=2",
                 results=results, env={"BENCH_REPORT_SECONDS": "0.2"}, check=True)
    lines = [line for line in proc.stderr.splitlines() if " step/s, ETA " in line]
    assert len(lines) >= 2, proc.stderr
    assert lines[-1].startswith("di_star ") and "step 200/200 (100%)" in lines[-1]
    assert "reward " in lines[0] and ", div " in lines[0]
