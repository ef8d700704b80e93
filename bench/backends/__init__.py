"""Reference-model families by name. Values are 'module:Class' so a heavy backend is imported only when used."""

from __future__ import annotations

import importlib

BACKENDS = {
    "analytic": "bench.backends.analytic:AnalyticBackend",
}


def build_backend(cfg, device):
    module, _, attr = BACKENDS[cfg.backend].partition(":")
    return getattr(importlib.import_module(module), attr)(cfg, device)
