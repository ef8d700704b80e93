"""`param`: a configuration field with its help text and valid range.

Its own module, so that the plugins that declare settings (methods, backends) import it without importing the
configuration that composes them: bench.config imports the plugins, never the other way.
"""

from __future__ import annotations

from dataclasses import field


def param(default, help: str, *, ge=None, gt=None, le=None, lt=None, choices=None, parse=None):
    """A config field with its documentation and its valid range; `parse(text)` for a structured value."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "parse": parse}
    return field(default=default, metadata=meta)
