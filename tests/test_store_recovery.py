"""The run folders are the truth and the index a cache: a corrupt or deleted index is rebuilt with a warning, and
a read-only store is read without writing anything."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench.cli import main
from bench.store import Store

from conftest import ROOT

SMALL = ["preset=smoke", "train.steps=2", "backend.image_size=4", "backend.prompts=2", "eval.grid=false"]


@pytest.fixture
def two_runs(results):
    for seed in (0, 1):
        assert main(["run", *SMALL, f"seed={seed}", f"results.dir={results}"]) == 0
    return results


def snapshot(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize("damage", ["corrupt", "deleted"])
def test_a_damaged_index_is_rebuilt_with_a_warning(two_runs, capsys, damage):
    index = two_runs / "index.sqlite"
    for extra in ("index.sqlite-wal", "index.sqlite-shm"):
        (two_runs / extra).unlink(missing_ok=True)
    if damage == "corrupt":
        index.write_bytes(b"this is not a database" * 100)
    else:
        index.unlink()
    capsys.readouterr()
    assert main(["runs", "list", f"results.dir={two_runs}"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("finished") == 2
    assert captured.err.startswith("bench: warning: the index") and "rebuilt from 2 run folders" in captured.err
    assert captured.err.count("\n") == 1
    if damage == "corrupt":
        assert list(two_runs.glob("index.sqlite.corrupt-*"))  # set aside, not deleted
    assert main(["run", "resume=latest", f"results.dir={two_runs}"]) == 2  # latest is found again
    assert "has already finished" in capsys.readouterr().err


@pytest.mark.parametrize("index", ["present", "deleted"])
def test_a_read_only_store_is_read_without_writing_a_byte(two_runs, monkeypatch, index):
    if index == "deleted":
        (two_runs / "index.sqlite").unlink()
    else:
        Store(two_runs).rows()  # settle the WAL files first: what is there is what a share would hold
    before = snapshot(two_runs)
    monkeypatch.setattr(Store, "writable", property(lambda self: False))
    with pytest.warns(UserWarning, match="read-only") if index == "deleted" else _nothing():
        assert len(Store(two_runs).rows()) == 2
    assert snapshot(two_runs) == before


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs root to become 'nobody'")
def test_a_store_another_user_cannot_write_lists_its_runs(two_runs):
    """The real thing: a process as 'nobody' reads a store it may not write (a dashboard on a shared folder)."""
    shared = Path(tempfile.mkdtemp(prefix="bench-shared-"))
    try:
        shutil.copytree(two_runs, shared / "results")
        (shared / "results" / "index.sqlite").unlink()  # and its index is gone too
        for path in [shared, *shared.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        before = snapshot(shared)
        listing = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-m", "bench", "runs",
             "list", f"results.dir={shared / 'results'}"],
            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HOME": "/tmp"})
        assert listing.returncode == 0, listing.stderr
        assert listing.stdout.count("finished") == 2 and "rebuilt in memory" in listing.stderr
        assert snapshot(shared) == before
    finally:
        shutil.rmtree(shared)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
