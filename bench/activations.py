"""Activation memory, counted on any device (the meta device included): the tensors autograd keeps for backward."""

from __future__ import annotations

import torch


def storage_key(tensor: torch.Tensor) -> int:
    """One number per storage while it lives, on every device. (A meta tensor's data_ptr is 0 for all.)"""
    return tensor.untyped_storage()._cdata


class SavedActivations:
    """Bytes of the tensors autograd saves for backward while inside the context, and their peak.

    Counted by storage (two views of one buffer count once), without the given modules' parameters and buffers.
    A saved tensor stops counting when autograd releases it (after its backward, or with its graph), so `peak`
    is the activation memory a piece of training needs: the same on the CPU, on a GPU for the same kernels, and on
    the meta device, where nothing is computed. Inside gradient-checkpointed blocks, the checkpoint's own hooks
    take over: what they keep (the blocks' inputs) is not seen.
    """

    def __init__(self, *modules: torch.nn.Module):
        self.own = {storage_key(t) for m in modules for t in [*m.parameters(), *m.buffers()]}
        self.holders: dict[int, list[int]] = {}  # storage -> [bytes, saved tensors on it]
        self.now = self.peak = 0
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda held: held.tensor)

    def __enter__(self) -> SavedActivations:
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)

    def pack(self, tensor: torch.Tensor) -> _Held:
        key = storage_key(tensor)
        if key in self.own:
            return _Held(tensor, None, key)
        entry = self.holders.setdefault(key, [tensor.untyped_storage().nbytes(), 0])
        if entry[1] == 0:
            self.now += entry[0]
            self.peak = max(self.peak, self.now)
        entry[1] += 1
        return _Held(tensor, self, key)

    def release(self, key: int) -> None:
        entry = self.holders[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.holders[key]


class _Held:
    """A saved tensor as autograd keeps it; tells the counter when autograd lets go of it."""

    def __init__(self, tensor: torch.Tensor, counter: SavedActivations | None, key: int):
        self.tensor, self.counter, self.key = tensor, counter, key

    def __del__(self):
        if self.counter is not None:
            self.counter.release(self.key)
