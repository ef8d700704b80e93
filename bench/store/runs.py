"""Runs on disk and their SQLite index.

    <root>/runs/<id>/config.yaml      resolved configuration
                     run.json         id, status, times, message, study link
                     metrics.jsonl    training and evaluation records, one JSON object a line
                     checkpoints/latest/  the last complete training state (accelerate's layout)
                     pipeline/        diffusers backends: the EMA generator as a one-step pipeline
                     samples/step_NNNNNN.png
                     summary.json     final metrics with provenance
                     evals/<eval id>/ protocol.json, scores.jsonl, images/, samples/, summary.json
    <root>/index.sqlite               one row a run (and one an evaluation), for listings, sweeps, the leaderboard
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import sqlite3
import time
import warnings
from contextlib import closing
from pathlib import Path

import yaml

from bench.errors import UsageError
from bench.store.files import atomic_write_bytes, atomic_write_json, read_jsonl

# "interrupted" is stored for a run stopped by Ctrl-C or SIGTERM, and shown for one recorded as running whose
# writer is gone (SIGKILL, out of memory, a lost machine): no process holds its writer lock.
STATUSES = ("running", "interrupted", "finished", "failed", "pruned")
WRITER_LOCK = ".writer.lock"
COLUMNS = ("id", "created", "updated", "status", "method", "backend", "reward", "name", "seed", "study",
           "trial", "message", "config", "summary")


def default_root() -> str:
    return os.environ.get("BENCH_RESULTS", "results")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Run:
    def __init__(self, store: Store, run_id: str):
        self.store = store
        self.id = run_id
        self.dir = store.runs_dir / run_id

    @property
    def info(self) -> dict:
        return json.loads((self.dir / "run.json").read_text())

    @property
    def config(self) -> dict:
        return yaml.safe_load((self.dir / "config.yaml").read_text())

    @property
    def summary(self) -> dict | None:
        path = self.dir / "summary.json"
        return json.loads(path.read_text()) if path.exists() else None

    @property
    def checkpoint_dir(self) -> Path:
        """The last complete checkpoint (an `accelerate` state folder, swapped in whole)."""
        return self.dir / "checkpoints" / "latest"

    def records(self, kind: str | None = None) -> list[dict]:
        return [r for r in read_jsonl(self.dir / "metrics.jsonl") if kind is None or r.get("kind") == kind]

    def log(self, record: dict) -> None:
        with open(self.dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def truncate_log(self, step: int) -> None:
        """Forget records past a checkpoint: a resumed run writes them again, identically."""
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        atomic_write_bytes(self.dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept).encode())

    def update(self, **fields) -> None:
        info = {**self.info, **fields, "updated": now()}
        atomic_write_json(self.dir / "run.json", info)
        self.store.index(self)

    @contextlib.contextmanager
    def writing(self):
        """Hold the run's writer lock while training it: one writer per run. The lock (flock) goes with the process,
        so a run whose process died has none, however it died."""
        with open(self.dir / WRITER_LOCK, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise UsageError(f"run {self.id} is being trained right now ({holder}); wait for it to end, or stop "
                                 "it and then resume it") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
            handle.flush()
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def has_writer(self) -> bool:
        """Whether a live process holds the writer lock (a shared lock can be had only when none does)."""
        try:
            with open(self.dir / WRITER_LOCK) as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                fcntl.flock(handle, fcntl.LOCK_UN)
                return False
        except OSError:
            return False

    def finish(self, summary: dict) -> None:
        atomic_write_json(self.dir / "summary.json", summary)
        self.update(status="finished", message="")

    def fail(self, message: str) -> None:
        self.update(status="failed", message=message)


class Store:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root or default_root())
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"results.dir={self.root} is a file, not a folder; point results.dir (or BENCH_RESULTS) "
                             "at a folder for the results store")
        self.runs_dir = self.root / "runs"
        self.db_path = self.root / "index.sqlite"

    def connect(self) -> sqlite3.Connection:
        self.root.mkdir(parents=True, exist_ok=True)
        # Sweep workers write concurrently: wait for the lock rather than fail.
        db = sqlite3.connect(self.db_path, timeout=60)
        db.execute("PRAGMA journal_mode=WAL")
        create_tables(db)
        return db

    @property
    def writable(self) -> bool:
        return os.access(self.root if self.root.exists() else self.root.parent, os.W_OK)

    def reader(self) -> sqlite3.Connection:
        """A connection to read the index. The folders are the truth and the index a cache: a missing or corrupt
        index is rebuilt from them with a warning (set aside, not deleted), in memory when the store is read-only,
        where the index is opened without writing a byte (a dashboard on a read-only share)."""
        if not self.db_path.exists():
            if not any(self.runs_dir.glob("*/run.json")):
                return in_memory()
            return self.rebuilt(f"the index {self.db_path} is missing")
        db = None
        try:
            db = self.connect() if self.writable else sqlite3.connect(f"file:{self.db_path}?immutable=1", uri=True)
            db.execute("SELECT count(*) FROM runs").fetchone()
            db.execute("SELECT count(*) FROM evals").fetchone()
        except sqlite3.DatabaseError as err:
            if db is not None:
                db.close()
            return self.rebuilt(f"the index {self.db_path} cannot be read ({err})")
        return db

    def rebuilt(self, reason: str) -> sqlite3.Connection:
        if self.writable:
            if self.db_path.exists():
                aside = self.db_path.with_name(f"{self.db_path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(self.db_path, aside)
                for extra in ("-wal", "-shm"):
                    self.db_path.with_name(self.db_path.name + extra).unlink(missing_ok=True)
                reason += f"; set aside as {aside.name}"
            count = self.reindex()
            db = self.connect()
        else:
            db = in_memory()
            count = self.fill(db)
            reason += "; the store is read-only, so it was rebuilt in memory for this reading"
        warnings.warn(f"{reason}; rebuilt from {count} run folders", StoreWarning, stacklevel=3)
        return db

    def create(self, config: dict, *, study: str | None = None, trial: int | None = None,
               run_id: str | None = None) -> Run:
        method = config["method"]["name"].replace(":", ".")
        run_id = run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{method}-{secrets.token_hex(3)}"
        run = Run(self, run_id)
        (run.dir / "checkpoints").mkdir(parents=True)
        (run.dir / "samples").mkdir()
        atomic_write_bytes(run.dir / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())
        stamp = now()
        atomic_write_json(run.dir / "run.json", {
            "id": run_id, "status": "running", "created": stamp, "updated": stamp, "message": "",
            "study": study, "trial": trial,
        })
        self.index(run)
        return run

    def index(self, run: Run) -> None:
        with closing(self.connect()) as db, db:
            put_run(db, run)

    def index_eval(self, run: Run, summary: dict) -> None:
        with closing(self.connect()) as db, db:
            put_eval(db, run, summary)

    def evals(self) -> list[dict]:
        with closing(self.reader()) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute("SELECT * FROM evals ORDER BY created DESC")]

    def reindex(self) -> int:
        """Rebuild the index from the run folders (after copying folders in, or losing the index)."""
        with closing(self.connect()) as db, db:
            return self.fill(db)

    def fill(self, db: sqlite3.Connection) -> int:
        """Put every readable run folder (and its evaluations) into `db`; unreadable ones are left out."""
        count = 0
        for folder in sorted(self.runs_dir.glob("*")):
            if (folder / "run.json").exists() and (folder / "config.yaml").exists():
                run = Run(self, folder.name)
                try:
                    put_run(db, run)
                    for summary in folder.glob("evals/*/summary.json"):
                        put_eval(db, run, json.loads(summary.read_text()))
                except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
                    continue  # a corrupt folder: the dashboard names it among the unindexed ones
                count += 1
        return count

    def get(self, run_id: str) -> Run:
        run = Run(self, run_id)
        if not (run.dir / "run.json").exists():
            raise UsageError(f"no run '{run_id}' in {self.root} (bench runs list shows the runs there)")
        return run

    def latest(self) -> Run:
        rows = self.rows()
        if not rows:
            raise UsageError(f"no runs in {self.root} to resume; start one with bench run")
        return self.get(rows[0]["id"])

    def rows(self, where: str = "", params: tuple = ()) -> list[dict]:
        """Index rows, newest first; a run recorded as running without a live writer is shown as interrupted."""
        with closing(self.reader()) as db:
            db.row_factory = sqlite3.Row
            query = f"SELECT * FROM runs {where} ORDER BY created DESC, id DESC"
            rows = [dict(row) for row in db.execute(query, params)]
        for row in rows:
            if row["status"] == "running" and not Run(self, row["id"]).has_writer():
                row["status"] = "interrupted"
        return rows


class StoreWarning(UserWarning):
    """Something about the store a user should hear of (an index rebuilt), though the command goes on."""


def create_tables(db: sqlite3.Connection) -> None:
    db.execute(f"CREATE TABLE IF NOT EXISTS runs ({', '.join(COLUMNS)}, PRIMARY KEY (id))")
    db.execute("CREATE TABLE IF NOT EXISTS evals (run_id, eval_id, created, protocol, metrics, "
               "PRIMARY KEY (run_id, eval_id))")


def in_memory() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    create_tables(db)
    return db


def put_run(db: sqlite3.Connection, run: Run) -> None:
    info, config, summary = run.info, run.config, run.summary
    row = {
        **{key: info.get(key) for key in ("id", "created", "updated", "status", "study", "trial", "message")},
        "method": config["method"]["name"],
        "backend": config["backend"]["name"],
        "reward": config["reward"],
        "name": config.get("name", ""),
        "seed": config.get("seed"),
        "config": json.dumps(config),
        "summary": json.dumps(summary) if summary else None,
    }
    db.execute(f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
               [row[c] for c in COLUMNS])


def put_eval(db: sqlite3.Connection, run: Run, summary: dict) -> None:
    db.execute("INSERT OR REPLACE INTO evals VALUES (?, ?, ?, ?, ?)",
               (run.id, summary["eval_id"], now(), json.dumps(summary["protocol"], sort_keys=True),
                json.dumps(summary["metrics"])))
