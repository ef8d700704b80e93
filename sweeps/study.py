"""Optuna studies whose trials are ordinary runs in the results store.

Workers share one storage. Each trial records a heartbeat; a trial whose worker died goes stale, is marked
failed and re-queued with the same parameters (RDB storages), and its run is marked failed too. Trials are
claimed under a file lock when the storage is a local file, so N workers complete exactly n_trials.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bench.config import build_config
from bench.errors import UsageError, did_you_mean
from bench.store import Store
from sweeps.space import SearchSpace

DONE = (TrialState.COMPLETE, TrialState.PRUNED)
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# We record heartbeats ourselves (see `heartbeat`), because trials are asked and told, not optimize()d.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler under ask and tell: our trial count says when a study is done, so a visited grid
    does not call Study.stop(), which only works inside optimize()."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def default_storage(results_dir) -> str:
    return f"sqlite:///{Path(results_dir).resolve()}/studies.db"


def open_storage(url: str, heartbeat: int):
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        if not path.parent.is_dir():
            raise UsageError(f"storage={url}: the folder {path.parent} does not exist; create it or give another path")
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    try:
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
        )
    except Exception as err:  # SQLAlchemy raises many kinds; the user needs the URL and the reason
        raise UsageError(f"cannot open storage '{url}': {str(err).splitlines()[0]}") from None


def lock_path(url: str) -> Path | None:
    """Our trial-claim lock beside a file-based storage; server storages (PostgreSQL, MySQL) have none.

    Not `<file>.lock`: that is the name of Optuna's own lock for journal files, which would wait out its grace
    period on ours and then delete it.
    """
    for prefix in ("sqlite:///", "journal:"):
        if url.startswith(prefix):
            return Path(url.removeprefix(prefix) + ".claims.lock")
    return None


@contextlib.contextmanager
def claim_lock(path: Path | None):
    if path is None:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def create_study(storage, name: str, space: SearchSpace, method: str, run_args: list[str], seed: int):
    identity = {"method": method, "space": space.name, "run_args": run_args}
    study = optuna.create_study(
        storage=storage, study_name=name, directions=space.directions, load_if_exists=True,
        sampler=(GridSampler(space.grid, seed=seed) if space.grid
                 else optuna.samplers.TPESampler(seed=seed)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1),
    )
    saved = study.user_attrs.get("identity")
    if saved is None:
        study.set_user_attr("identity", identity)
        study.set_user_attr("objectives", [list(o) for o in space.objectives])
        study.set_user_attr("fixed", space.fixed)
    elif saved != identity:
        raise UsageError(
            f"study '{name}' was created with method={saved['method']} space={saved['space']} "
            f"{' '.join(saved['run_args'])}; use the same arguments to continue it, or another study= name"
        )
    return study


def load_study(storage, name: str):
    names = optuna.get_all_study_names(storage)
    if name not in names:
        raise UsageError(f"no study '{name}' in this storage{did_you_mean(name, names) if names else ''}")
    return optuna.load_study(storage=storage, study_name=name)


def heartbeat_interval(study) -> int | None:
    """Seconds between heartbeats; None where the storage keeps none (a journal file cannot tell a dead
    worker from a slow one: only Optuna's SQL storages beat hearts)."""
    storage = study._storage
    return storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None


@contextlib.contextmanager
def heartbeat(study, trial):
    """Record the trial's heartbeat from a thread while it runs (Optuna only does so inside optimize())."""
    storage, interval = study._storage, heartbeat_interval(study)
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat():
        while not stop.is_set():
            storage.record_heartbeat(trial._trial_id)
            stop.wait(interval)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def recover_stale(study, store: Store) -> None:
    """Fail and re-queue trials whose worker stopped beating, and fail their runs."""
    if not heartbeat_interval(study):
        return
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    optuna.storages.fail_stale_trials(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = trial.user_attrs.get("run_id")
        if trial.number in before and run_id:
            with contextlib.suppress(UsageError):
                store.get(run_id).fail(f"its sweep worker stopped during trial {trial.number}; the trial was re-queued")


def next_trial(study, n_trials: int, lock: Path | None, store: Store):
    """The next trial to run, or None when the study has reached its target.

    Waiting (re-queued) trials come first. A new trial is created only while fewer than n_trials are done or
    running; while some still run elsewhere and none can be started, wait, because they may yet go stale and
    come back, but only where heartbeats can tell (else a dead worker's trial would hold us forever).
    """
    while True:
        recover_stale(study, store)
        with claim_lock(lock):
            trials = study.get_trials(deepcopy=False)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            done = sum(t.state in DONE for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if waiting or done + running < n_trials:
                return study.ask()
            if running == 0 or not heartbeat_interval(study):
                return None
        time.sleep(1.0)


def run_trial(study, trial, space: SearchSpace, run_args: list[str], store: Store, method: str) -> dict:
    """One trial: a normal run in the store, linked both ways; returns a line for the user."""
    from bench.train.trainer import Diverged, Trainer

    values = {p.key: p.suggest(trial) for p in space.params}
    args = [f"method={method}", *run_args, *(f"{k}={v}" for k, v in values.items())]
    cfg = build_config(args, base=[f"{k}={v}" for k, v in space.fixed.items()])
    run = store.create(cfg.to_dict(), study=study.study_name, trial=trial.number)
    trial.set_user_attr("run_id", run.id)
    single = len(space.objectives) == 1
    metric = space.objectives[0][0]

    def report(step: int, metrics: dict):
        # Intermediate evaluations only: the final one is the objective, and a finished trial is not pruned.
        if single and 0 < step < cfg.train.steps:
            trial.report(metrics[metric], step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}: {metric} {metrics[metric]:.4g}")

    outcome = {"trial": trial.number, "run": run.id, "params": values}
    with heartbeat(study, trial), run.writing():
        try:
            summary = Trainer(cfg, run, progress=False, on_eval=report).fit()
        except optuna.TrialPruned as err:
            run.update(status="pruned", message=str(err))
            study.tell(trial, state=TrialState.PRUNED)
            return {**outcome, "state": "pruned"}
        except Diverged as err:
            run.fail(str(err))
            study.tell(trial, state=TrialState.FAIL)
            return {**outcome, "state": "failed", "why": str(err)}
    run.finish(summary)
    objective = [summary["metrics"][m] for m, _ in space.objectives]
    study.tell(trial, objective)
    return {**outcome, "state": "complete", "values": dict(zip([m for m, _ in space.objectives], objective,
                                                                strict=True))}


def work(study, space: SearchSpace, run_args: list[str], n_trials: int, store: Store, method: str, lock,
         on_trial=None) -> None:
    while True:
        trial = next_trial(study, n_trials, lock, store)
        if trial is None:
            return
        outcome = run_trial(study, trial, space, run_args, store, method)
        if on_trial is not None:
            on_trial(outcome)

