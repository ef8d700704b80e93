"""The results store: one folder per run (the truth) and an SQLite index (a cache that can be rebuilt)."""

from bench.store.runs import Run, Store, default_root

__all__ = ["Run", "Store", "default_root"]
