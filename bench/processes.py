"""The processes of an `accelerate launch` (or the one process of a plain command), the same for every command."""

from __future__ import annotations


def process_state():
    """accelerate's shared process state. On a machine without CUDA it must be asked for CPU processes, or a
    launch of several (gloo) is taken for one process repeated."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())
