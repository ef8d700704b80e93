"""Reference-model families by name. Values are 'module:Class' so a heavy backend is imported only when used.

A backend class carries its settings as a dataclass `Config` (the `backend.KEY=VALUE` overrides) and builds,
from them, the networks the trainer updates and everything they are measured against.
"""

from __future__ import annotations

import importlib

from bench.errors import UsageError, did_you_mean

BACKENDS = {
    "analytic": "bench.backends.analytic:AnalyticBackend",
    "sd15": "bench.backends.pretrained:SD15Backend",
    "pixart_alpha": "bench.backends.pretrained:PixArtAlphaBackend",
    "sdxl": "bench.backends.pretrained:SDXLBackend",
    "sd3": "bench.backends.pretrained:SD3Backend",
}


def load_backend(name: str) -> type:
    if name not in BACKENDS:
        raise UsageError(f"backend={name} is not valid{did_you_mean(name, BACKENDS)}")
    module, _, attr = BACKENDS[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    cls.Config.name = name
    return cls


def build_backend(cfg, device):
    return load_backend(cfg.backend.name)(cfg, device)
