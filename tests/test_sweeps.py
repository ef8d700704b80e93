"""Sweeps: real Optuna studies whose trials are runs in the store (issue: sweeps)."""

import json
import os
import signal

import optuna
import pytest

from bench.cli import main
from bench.config import build_config
from bench.store import Store

from conftest import bench, bench_process, wait_until

# Short trials: the machinery is under test here, the maths elsewhere.
FAST = ["backend.image_size=4", "backend.prompts=4", "backend.hidden=64", "train.batch_size=64", "eval.samples=256"]


def storage_of(results):
    return f"sqlite:///{results.resolve()}/studies.db"


def trials_of(results, study):
    return optuna.load_study(study_name=study, storage=storage_of(results)).get_trials()


def test_sweep_finds_a_configuration_that_beats_the_default(results, capsys, tmp_path):
    """DI++'s default alpha_rew (0.2) holds p* at alpha_rew 20 on this world (its equilibrium shift is about
    alpha_rew / 0.96, p*'s 20 s0^2 = 0.2): aimed at p* at alpha_rew 5 it overshoots, and a sweep of alpha_rew alone
    must find a setting nearer that law by the exact KL(p_theta || p*)."""
    space = tmp_path / "nearer.yaml"
    space.write_text("objectives: [{metric: kl_star, direction: minimize}]\n"
                     "params: {method.alpha_rew: {low: 0.01, high: 1.0, log: true}}\n"
                     "fixed: {eval.target_alpha_rew: 5, eval.grid: false, train.eval_every: 0}\n")
    args = ["sweep", "method=di_pp", f"space={space}", "study=nearer", "n_trials=12", f"results.dir={results}",
            *FAST, "train.steps=150"]
    assert main(args) == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="nearer", storage=storage_of(results))
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(done) == 12
    # The default configuration under the same protocol (the space's fixed keys and the same overrides).
    assert main(["run", "method=di_pp", "eval.target_alpha_rew=5", "eval.grid=false", "train.eval_every=0",
                 f"results.dir={results}", *FAST, "train.steps=150"]) == 0
    default = Store(results).rows("WHERE study IS NULL")[0]
    default_value = json.loads(default["summary"])["metrics"]["kl_star"]
    assert study.best_value < 0.5 * default_value, (study.best_value, default_value)
    # The printed command line reproduces the best trial's settings.
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("bench run"))
    best = build_config(command.split()[2:])
    assert best.method.alpha_rew == pytest.approx(study.best_params["method.alpha_rew"], rel=1e-5)
    assert best.train.steps == 150 and best.eval.target_alpha_rew == 5
    linked = Store(results).rows("WHERE study = ?", ("nearer",))
    assert len(linked) == 12 and {r["trial"] for r in linked} == set(range(12))


def test_the_best_line_reproduces_its_trial_to_full_precision(results, capsys):
    """One precedence rule for trials and for the printed line: a preset is the lowest explicit layer, so the
    space's fixed keys beat preset=smoke in both."""
    assert main(["sweep", "method=di_star", "study=again", "n_trials=2", "preset=smoke", f"results.dir={results}",
                 *FAST]) == 0
    study = optuna.load_study(study_name="again", storage=storage_of(results))
    command = next(line.strip() for line in capsys.readouterr().out.splitlines()
                   if line.strip().startswith("bench run")).split()[2:]
    assert build_config(command).train.steps == 400  # the space's fixed value, not the preset's 60
    assert main(["run", *command]) == 0
    again = next(r for r in Store(results).rows() if r["study"] is None)
    assert json.loads(again["summary"])["metrics"]["kl_star"] == pytest.approx(study.best_value, rel=1e-6)


def test_two_workers_complete_the_target_without_loss_or_duplicates(results):
    proc = bench("sweep", "method=di_pp", "study=pair", "n_trials=6", "--workers", "2", *FAST,
                 "train.steps=40", results=results, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    trials = trials_of(results, "pair")
    assert len(trials) == 6
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    runs = Store(results).rows("WHERE study = ?", ("pair",))
    assert sorted(r["trial"] for r in runs) == list(range(6))
    assert {t.user_attrs["run_id"] for t in trials} == {r["id"] for r in runs}
    assert all(r["status"] == "finished" for r in runs)


def test_a_killed_worker_leaves_a_failed_trial_and_the_study_goes_on(results):
    args = ["sweep", "method=di_pp", "study=crash", "n_trials=3", "heartbeat=1", *FAST, "train.steps=800"]
    proc = bench_process(*args, results=results, env={"OMP_NUM_THREADS": "1"})

    def trial_started():
        runs = Store(results).rows() if (results / "index.sqlite").exists() else []
        return runs and (results / "runs" / runs[0]["id"] / "metrics.jsonl").exists()

    wait_until(trial_started, proc=proc, interval=0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_run = Store(results).rows()[0]["id"]

    resumed = bench("sweep", *args[1:6], *FAST, "train.steps=40", results=results)
    assert resumed.returncode != 0 and "use the same arguments" in resumed.stderr  # a changed study is refused
    finished = bench(*args, results=results, env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert finished.returncode == 0, finished.stderr
    trials = trials_of(results, "crash")
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    failed = next(t for t in trials if t.state == optuna.trial.TrialState.FAIL)
    retried = [t for t in trials if t.user_attrs.get("retry_of") == failed.number]
    assert len(retried) == 1 and retried[0].params == failed.params
    info = Store(results).get(killed_run).info
    assert info["status"] == "failed" and "re-queued" in info["message"]


def dominates(a, b, directions):
    signs = [1 if d == "maximize" else -1 for d in directions]
    better_or_equal = all(s * x >= s * y for s, x, y in zip(signs, a, b, strict=True))
    return better_or_equal and any(s * x > s * y for s, x, y in zip(signs, a, b, strict=True))


def test_multi_objective_study_returns_exactly_the_non_dominated_set(results, capsys):
    assert main(["sweep", "method=kl_rlhf", "space=reward_vs_nll", "n_trials=8", f"results.dir={results}",
                 *FAST, "train.steps=100"]) == 0
    assert "Pareto front" in capsys.readouterr().out
    study = optuna.load_study(study_name="kl_rlhf-reward_vs_nll", storage=storage_of(results))
    directions = ["maximize", "minimize"]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    front = {t.number for t in study.best_trials}
    for t in complete:
        dominated = any(dominates(o.values, t.values, directions) for o in complete)
        assert (t.number in front) == (not dominated)
    assert main(["sweep", "best", "study=kl_rlhf-reward_vs_nll", f"results.dir={results}"]) == 0
    assert capsys.readouterr().out.count("bench run method=kl_rlhf") == len(front)
    assert main(["sweep", "status", "study=kl_rlhf-reward_vs_nll", f"results.dir={results}"]) == 0
    assert "8 complete" in capsys.readouterr().out


BAD_SPACES = [
    ("params:\n  method.alpha_rwe: {low: 0.1, high: 1}\nobjectives: [{metric: reward}]",
     "unknown key 'method.alpha_rwe'; did you mean 'method.alpha_rew'?"),
    ("params:\n  method.alpha_rew: {low: 1, high: 1}\nobjectives: [{metric: reward}]",
     "method.alpha_rew has an empty range [1, 1]"),
    ("params:\n  method.alpha_cfg: {low: 0, high: 2, log: true}\nobjectives: [{metric: reward}]",
     "method.alpha_cfg is searched on a log scale, so its range must be above 0"),
    ("params:\n  method.alpha_rew: {low: -1, high: 2}\nobjectives: [{metric: reward}]",
     "method.alpha_rew=-1 is outside what bench run accepts: method.alpha_rew must be at least 0"),
    ("params:\n  method.alpha_rew: {low: 0.1, high: 2}\nobjectives: [{metric: rewrd}]",
     "unknown metric 'rewrd'; did you mean 'reward'?"),
    ("params:\n  method.alpha_rew: {low: 0.1, high: 2}\nobjectives: [{metric: reward, direction: up}]",
     "direction of reward must be minimize or maximize"),
    ("params:\n  method.estimator: {choices: []}\nobjectives: [{metric: reward}]",
     "method.estimator has an empty list of choices"),
    ("objectives: [{metric: reward}]", "needs at least one parameter to search"),
    ("parms: {}\nobjectives: [{metric: reward}]", "unknown section 'parms'"),
]


@pytest.mark.parametrize("text, message", BAD_SPACES, ids=[m for _, m in BAD_SPACES])
def test_bad_search_space_is_refused_before_any_trial(tmp_path, results, capsys, text, message):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    assert main(["sweep", f"space={space}", f"results.dir={results}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("bench: error: search space space.yaml: ")
    assert not (results / "runs").exists()
    assert not (results / "studies.db").exists()  # nothing left behind by a refused command


def test_status_of_a_missing_study_names_the_ones_there(results, capsys):
    assert main(["sweep", "method=di_pp", "study=present", "n_trials=1", f"results.dir={results}", *FAST,
                 "train.steps=10"]) == 0
    capsys.readouterr()
    assert main(["sweep", "status", "study=presnt", f"results.dir={results}"]) == 2
    assert "no study 'presnt' in this storage; did you mean 'present'?" in capsys.readouterr().err


def test_a_journal_file_storage_works_without_heartbeats(results, tmp_path, capsys):
    journal = tmp_path / "journal.log"
    assert main(["sweep", "method=di_pp", "study=j", "n_trials=2", f"storage=journal:{journal}",
                 f"results.dir={results}", *FAST, "train.steps=20"]) == 0
    assert main(["sweep", "status", "study=j", f"storage=journal:{journal}", f"results.dir={results}"]) == 0
    assert "2 complete" in capsys.readouterr().out


def test_studies_open_in_optuna_dashboard(results):
    """optuna-dashboard's own WSGI app reads our storage and lists the study with all its trials."""
    from wsgiref.util import setup_testing_defaults

    import optuna_dashboard

    assert main(["sweep", "method=di_pp", "study=viewed", "n_trials=2", f"results.dir={results}", *FAST,
                 "train.steps=20"]) == 0
    app = optuna_dashboard.wsgi(storage_of(results))

    def get(path):
        environ = {}
        setup_testing_defaults(environ)
        environ["PATH_INFO"] = path
        status = []
        body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
        assert status == ["200 OK"]
        return json.loads(body)

    (summary,) = get("/api/studies")["study_summaries"]
    assert summary["study_name"] == "viewed"
    trials = get(f"/api/studies/{summary['study_id']}")["trials"]
    assert len(trials) == 2 and {t["state"] for t in trials} == {"Complete"}


class FlakyStorage:
    """An SQL storage under load: the first heartbeats fail with 'database is locked'."""

    def __init__(self, failures):
        self.failures, self.beats = failures, 0

    def get_heartbeat_interval(self):
        return 0.05

    def record_heartbeat(self, trial_id):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        self.beats += 1


def test_the_heartbeat_outlives_storage_errors():
    from types import SimpleNamespace

    from sweeps.study import heartbeat

    storage = FlakyStorage(failures=3)
    study, trial = SimpleNamespace(_storage=storage), SimpleNamespace(_trial_id=1, number=0)
    with pytest.warns(RuntimeWarning, match="database is locked"), heartbeat(study, trial):
        wait_until(lambda: storage.beats >= 3, timeout=10)


def test_a_live_worker_is_not_given_up_for_a_late_heartbeat(results):
    """Only a worker that is really gone loses its trial: a run whose writer lives keeps it, heartbeat or not."""
    from types import SimpleNamespace

    from sweeps import study as studies

    assert main(["run", "preset=smoke", "train.steps=2", *FAST, f"results.dir={results}"]) == 0
    run = Store(results).get(Store(results).rows()[0]["id"])
    sql = SimpleNamespace(_storage=SimpleNamespace(get_heartbeat_interval=lambda: 10))
    trial = SimpleNamespace(_trial_id=7, user_attrs={"run_id": run.id})
    os.utime(run.dir / "run.json", (0, 0))  # long past the grace after creation
    with run.writing():
        assert not studies.worker_gone(sql, trial, Store(results), stale_by_heartbeat={7})
    assert studies.worker_gone(sql, trial, Store(results), stale_by_heartbeat={7})
    assert not studies.worker_gone(sql, trial, Store(results), stale_by_heartbeat=set())  # the heartbeat disagrees
    journal = SimpleNamespace(_storage=SimpleNamespace())  # no heartbeats: the lock alone
    assert studies.worker_gone(journal, trial, Store(results), stale_by_heartbeat=set())


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL on a journal"])
def test_a_stopped_sweep_re_queues_its_trial_and_the_study_completes(results, tmp_path, stop):
    storage = [] if stop == "SIGTERM" else [f"storage=journal:{tmp_path / 'journal.log'}"]
    args = ["sweep", "method=di_pp", "study=stopped", "n_trials=2", *storage, *FAST, "train.steps=400"]
    proc = bench_process(*args, results=results, env={"OMP_NUM_THREADS": "1"})
    wait_until(lambda: (results / "runs").exists() and any((results / "runs").glob("*/metrics.jsonl")), proc=proc)
    proc.send_signal(signal.SIGTERM if stop == "SIGTERM" else signal.SIGKILL)
    proc.wait(timeout=60)
    first = next((results / "runs").iterdir()).name
    if stop == "SIGTERM":
        assert proc.returncode == 130
        assert Store(results).get(first).info["status"] == "interrupted"
    finished = bench(*args, results=results, env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert finished.returncode == 0, finished.stderr
    storage_url = f"journal:{tmp_path / 'journal.log'}" if storage else storage_of(results)
    if storage:
        from sweeps.study import open_storage

        storage_url = open_storage(storage_url, 10)
    trials = optuna.load_study(study_name="stopped", storage=storage_url).get_trials()
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2 and states.count(optuna.trial.TrialState.FAIL) == 1
    failed = next(t for t in trials if t.state == optuna.trial.TrialState.FAIL)
    assert [t.params for t in trials if t.user_attrs.get("retry_of") == failed.number] == [failed.params]
    assert Store(results).get(first).info["status"] in ("interrupted", "failed")
    assert " started " in finished.stdout  # a line as each trial starts, in a log as on a terminal


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A real PostgreSQL server, started from the pgserver wheel's binaries in a temporary folder."""
    import pgserver

    folder = tmp_path_factory.mktemp("pg")
    server = pgserver.get_server(folder, cleanup_mode="stop")
    yield f"postgresql://postgres:@/postgres?host={folder}"
    server.cleanup()


def writer_pid(run_dir) -> int | None:
    lock = run_dir / ".writer.lock"
    text = lock.read_text() if lock.exists() else ""
    return int(text.split()[1]) if text.startswith("pid ") else None


def test_workers_on_postgresql_survive_one_killed_and_complete_exactly_the_target(results, postgres, tmp_path):
    """Three workers, as on three machines, share a PostgreSQL study; one is SIGKILLed mid-trial. Trials are
    claimed under the server's advisory lock, the dead trial is found by heartbeat and writer lock, re-queued once,
    and the study ends with exactly n_trials complete and one run per trial. The space's objective is never NaN
    (an exact KL is, where a generator folds, and Optuna fails such a trial), so the one failure is the kill's."""
    space = tmp_path / "recovery.yaml"
    space.write_text("objectives: [{metric: reward, direction: maximize}]\n"
                     "params: {method.alpha_rew: {low: 0.02, high: 1.0, log: true}, "
                     "method.alpha_cfg: {low: 0.5, high: 2.0}}\n"
                     "fixed: {eval.grid: false}\n")
    args = ["sweep", "method=di_pp", f"space={space}", "study=pg", "n_trials=4", f"storage={postgres}", "heartbeat=1",
            *FAST, "train.steps=300"]
    workers = [bench_process(*args, results=results, env={"OMP_NUM_THREADS": "1"}) for _ in range(3)]
    doomed = workers[0]

    def doomed_is_training():
        runs = results / "runs"
        return runs.exists() and any(writer_pid(d) == doomed.pid and (d / "metrics.jsonl").exists()
                                     for d in runs.iterdir())

    wait_until(doomed_is_training, proc=doomed, interval=0.05)
    doomed.send_signal(signal.SIGKILL)
    killed_run = next(d.name for d in (results / "runs").iterdir() if writer_pid(d) == doomed.pid)
    for proc in workers[1:]:
        assert proc.wait(timeout=400) == 0
    from sweeps.study import open_storage

    trials = optuna.load_study(study_name="pg", storage=open_storage(postgres, 1)).get_trials()
    states = [t.state for t in trials]
    story = [(t.number, t.state.name, t.user_attrs, Store(results).get(t.user_attrs["run_id"]).info.get("message")
              if "run_id" in t.user_attrs else None) for t in trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4 and states.count(optuna.trial.TrialState.FAIL) == 1, \
        story
    failed = next(t for t in trials if t.state == optuna.trial.TrialState.FAIL)
    assert failed.user_attrs["run_id"] == killed_run
    assert [t.params for t in trials if t.user_attrs.get("retry_of") == failed.number] == [failed.params]
    first_tries = [tuple(t.params.values()) for t in trials if "retry_of" not in t.user_attrs]
    assert len(set(first_tries)) == 4  # workers with one sampler seed still suggest different parameters
    runs = Store(results).rows("WHERE study = ?", ("pg",))
    assert len(runs) == 5 and len({r["trial"] for r in runs}) == 5  # one run a trial, none run twice
    finished = {t.user_attrs["run_id"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert {r["id"] for r in runs if r["status"] == "finished"} == finished
    assert Store(results).get(killed_run).info["status"] == "failed"


def test_the_claim_lock_on_postgresql_excludes_other_workers(postgres):
    """Counting trials and asking for one happen under the server's lock: a second connection waits for it."""
    import threading

    from sweeps.study import claim_lock, open_storage

    def study():
        return optuna.create_study(storage=open_storage(postgres, 1), study_name="claims", load_if_exists=True)

    mine, theirs = study(), study()
    order = []

    def claim_theirs():
        with claim_lock(theirs, postgres):
            order.append("theirs")

    with claim_lock(mine, postgres):
        other = threading.Thread(target=claim_theirs)
        other.start()
        other.join(timeout=1.0)
        assert other.is_alive()  # still waiting
        order.append("mine released")
    other.join(timeout=10)
    assert order == ["mine released", "theirs"]
