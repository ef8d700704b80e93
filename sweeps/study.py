"""Optuna studies whose trials are ordinary runs in the results store.

Workers share one storage. Each trial records a heartbeat; a trial whose worker died goes stale, is marked
failed and re-queued with the same parameters (RDB storages), and its run is marked failed too. Trials are
claimed under a lock (a file lock beside a local storage, the database's named lock on a server), so N workers
complete exactly n_trials.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import threading
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bench.config import build_config
from bench.errors import UsageError, did_you_mean
from bench.store import Run, Store
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


class TPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE with its random draws keyed by (seed, trial number). Workers all start with the same seed;
    with one stream a process they would suggest the same parameters for their first trials, one copy each."""

    def __init__(self, seed: int):
        super().__init__(seed=seed)
        self.seed = seed

    def before_trial(self, study, trial) -> None:
        for state in (self._rng, self._random_sampler._rng):
            state.rng.seed([self.seed, trial.number])
        super().before_trial(study, trial)


def default_storage(results_dir) -> str:
    return f"sqlite:///{Path(results_dir).resolve()}/studies.db"


def open_storage(url: str, heartbeat: int):
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        if not path.parent.is_dir():
            raise UsageError(f"storage={url}: the folder {path.parent} does not exist; create it or give another path")
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    for attempt in range(3):
        try:
            # Stale trials are failed and re-queued by recover_stale, which also asks the trial's run whether its
            # worker is gone; Optuna's own callback would re-queue on the heartbeat alone.
            return optuna.storages.RDBStorage(with_driver(url), heartbeat_interval=heartbeat,
                                              grace_period=3 * heartbeat)
        except Exception as err:  # SQLAlchemy raises many kinds; the user needs the URL and the reason
            # Workers started together on an empty database race to create Optuna's tables; the losers find them
            # made on the next try. PostgreSQL says "already exists" or "duplicate key", SQLite "UNIQUE constraint".
            racing = any(words in str(err) for words in ("already exists", "duplicate key", "UNIQUE constraint"))
            if attempt == 2 or not racing:
                raise UsageError(f"cannot open storage '{url}': {str(err).splitlines()[0]}") from None
            time.sleep(0.5 + attempt)


def with_driver(url: str) -> str:
    """A plain postgresql:// URL names SQLAlchemy's default driver, psycopg2; where only psycopg 3 is installed
    (our `postgres` extra), use that instead of failing on a missing module."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres") or not sep:
        return url
    if importlib.util.find_spec("psycopg2") is not None:
        return url
    if importlib.util.find_spec("psycopg") is None:
        raise UsageError(f"storage={url} needs a PostgreSQL driver: pip install 'onestep-align-bench[postgres]'")
    return f"postgresql+psycopg://{rest}"


def lock_path(url: str) -> Path | None:
    """Our trial-claim lock beside a file-based storage.

    Not `<file>.lock`: that is the name of Optuna's own lock for journal files, which would wait out its grace
    period on ours and then delete it.
    """
    for prefix in ("sqlite:///", "journal:"):
        if url.startswith(prefix):
            return Path(url.removeprefix(prefix) + ".claims.lock")
    return None


@contextlib.contextmanager
def claim_lock(study, url: str):
    """Held while a worker counts the study's trials and asks for one, so N workers complete exactly n_trials.

    A file lock beside a local storage; on a database server, the server's own named lock (PostgreSQL advisory
    lock, MySQL GET_LOCK), held by a connection of ours: it goes with the connection when a worker dies.
    """
    path = lock_path(url)
    if path is not None:
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    engine = getattr(getattr(study._storage, "_backend", study._storage), "engine", None)
    dialect = engine.dialect.name if engine is not None else ""
    if dialect not in ("postgresql", "mysql"):
        yield  # no lock to be had: counting may overshoot n_trials by a trial per extra worker
        return
    from sqlalchemy import text

    key = int.from_bytes(hashlib.sha256(f"bench-sweep:{study.study_name}".encode()).digest()[:8], "big", signed=True)
    take, give = (("SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)") if dialect == "postgresql"
                  else ("SELECT GET_LOCK(CAST(:key AS CHAR), -1)", "SELECT RELEASE_LOCK(CAST(:key AS CHAR))"))
    with engine.connect() as connection:
        connection.execute(text(take), {"key": key})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text(give), {"key": key})
            connection.commit()


def create_study(storage, name: str, space: SearchSpace, method: str, run_args: list[str], seed: int):
    identity = {"method": method, "space": space.name, "run_args": run_args}
    study = optuna.create_study(
        storage=storage, study_name=name, directions=space.directions, load_if_exists=True,
        sampler=(GridSampler(space.grid, seed=seed) if space.grid
                 else TPESampler(seed)),
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
    """Record the trial's heartbeat from a thread while it runs (Optuna only does so inside optimize()).

    A storage error ("database is locked" under many workers) is retried at the next beat, not allowed to end
    the thread: a silent thread would get a live trial failed and run twice.
    """
    storage, interval = study._storage, heartbeat_interval(study)
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat():
        while not stop.is_set():
            try:
                storage.record_heartbeat(trial._trial_id)
            except Exception as err:  # SQLAlchemy's errors vary by server; each one is worth another try
                warnings.warn(f"heartbeat of trial {trial.number} failed ({str(err).splitlines()[0]}); retrying",
                              RuntimeWarning, stacklevel=1)
                stop.wait(min(1.0, interval))
                continue
            stop.wait(interval)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# A trial's run takes its writer lock milliseconds after it is created; younger runs are not judged by it.
LOCK_GRACE_SECONDS = 5


def worker_gone(study, trial, store: Store, stale_by_heartbeat: set[int]) -> bool:
    """Whether the worker of a RUNNING trial is really gone.

    The trial's run holds a writer lock while it trains, and the lock goes with its process however it ends: where
    the run is in this store, that decides (with the heartbeat agreeing, where the storage keeps one, in case the
    store is a shared filesystem whose locks do not cross machines). Where it is not, only heartbeats can tell.
    """
    heartbeats = heartbeat_interval(study) is not None
    run_id = trial.user_attrs.get("run_id")
    run = Run(store, run_id) if run_id else None
    if run is not None and (run.dir / "run.json").exists():
        created = (run.dir / "run.json").stat().st_mtime
        if time.time() - created < LOCK_GRACE_SECONDS or run.has_writer():
            return False
        return not heartbeats or trial._trial_id in stale_by_heartbeat
    return heartbeats and trial._trial_id in stale_by_heartbeat


def recover_stale(study, store: Store) -> None:
    """Fail the trials whose worker is gone, re-queue their parameters, and fail their runs: on every storage."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return
    storage = study._storage
    stale = set(storage._get_stale_trial_ids(study._study_id)) if heartbeat_interval(study) else set()
    for trial in running:
        if not worker_gone(study, trial, store, stale):
            continue
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue  # another worker recovered it first
        except RuntimeError:
            continue  # it finished or was recovered in the meantime
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        run_id = trial.user_attrs.get("run_id")
        if run_id:
            with contextlib.suppress(UsageError, OSError):
                store.get(run_id).fail(f"its sweep worker stopped during trial {trial.number}; the trial was re-queued")


def next_trial(study, n_trials: int, url: str, store: Store):
    """The next trial to run, or None when the study has reached its target.

    Waiting (re-queued) trials come first. A new trial is created only while fewer than n_trials are done or
    running; while some still run elsewhere and none can be started, wait, because they may yet go stale and
    come back, but only where heartbeats can tell (else a dead worker's trial would hold us forever).
    """
    while True:
        recover_stale(study, store)
        with claim_lock(study, url):
            trials = study.get_trials(deepcopy=False)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            done = sum(t.state in DONE for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if waiting or done + running < n_trials:
                return study.ask()
            if running == 0 or not heartbeat_interval(study):
                return None
        time.sleep(1.0)


def run_trial(study, trial, space: SearchSpace, run_args: list[str], store: Store, method: str, on_start=None,
              report_every: float | None = None) -> dict:
    """One trial: a normal run in the store, linked both ways; returns a line for the user."""
    from bench.train.trainer import Diverged, Trainer

    values = {p.key: p.suggest(trial) for p in space.params}
    args = [f"method={method}", *run_args, *(f"{k}={v}" for k, v in values.items())]
    cfg = build_config(args, base=[f"{k}={v}" for k, v in space.fixed.items()])
    run = store.create(cfg.to_dict(), study=study.study_name, trial=trial.number)
    trial.set_user_attr("run_id", run.id)
    if on_start is not None:
        on_start({"trial": trial.number, "run": run.id, "params": values})
    single = len(space.objectives) == 1
    metric = space.objectives[0][0]

    def report(step: int, metrics: dict):
        # Intermediate evaluations only: the final one is the objective, and a finished trial is not pruned.
        # An exact KL is computed at the first and last evaluation only: nothing to prune on in between.
        if single and 0 < step < cfg.train.steps and metric in metrics:
            trial.report(metrics[metric], step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}: {metric} {metrics[metric]:.4g}")

    outcome = {"trial": trial.number, "run": run.id, "params": values}
    with heartbeat(study, trial), run.writing():
        try:
            summary = Trainer(cfg, run, progress=False, on_eval=report, report_every=report_every).fit()
        except optuna.TrialPruned as err:
            run.update(status="pruned", message=str(err))
            tell(study, trial, state=TrialState.PRUNED)
            return {**outcome, "state": "pruned"}
        except Diverged as err:
            run.fail(str(err))
            tell(study, trial, state=TrialState.FAIL)
            return {**outcome, "state": "failed", "why": str(err)}
        except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: this worker stops, the trial is done again later
            run.update(status="interrupted", message=f"{err or 'Ctrl-C'}; the trial was re-queued")
            if tell(study, trial, state=TrialState.FAIL):
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
            raise
        except Exception as err:
            run.fail(f"{type(err).__name__}: {err}")
            tell(study, trial, state=TrialState.FAIL)
            raise
        # Finished and told while the run's lock is held and its heartbeat beats: a worker looking for dead trials
        # must never find a finished trial with its lock free and its heartbeat silent before the study knows.
        run.finish(summary)
        objective = [summary["metrics"][m] for m, _ in space.objectives]
        told = tell(study, trial, objective)
    if not told:
        return {**outcome, "state": "complete", "values": {}, "note": "another worker had given the trial up"}
    return {**outcome, "state": "complete", "values": dict(zip([m for m, _ in space.objectives], objective,
                                                                strict=True))}


def tell(study, trial, values=None, state=None) -> bool:
    """study.tell, except for a trial another worker already failed and re-queued (its worker looked gone): then
    the run keeps its result and the study its re-queued copy. False in that case."""
    if study._storage.get_trial(trial._trial_id).state.is_finished():
        return False
    study.tell(trial, values, state=state, skip_if_finished=True)
    return True


def work(study, space: SearchSpace, run_args: list[str], n_trials: int, store: Store, method: str, url: str,
         on_trial=None, on_start=None, report_every: float | None = None) -> None:
    while True:
        trial = next_trial(study, n_trials, url, store)
        if trial is None:
            return
        outcome = run_trial(study, trial, space, run_args, store, method, on_start, report_every)
        if on_trial is not None:
            on_trial(outcome)

