"""Fully sharded training (`train.parallel=fsdp`): each process holds 1/P of every trained weight, its gradient, its
optimiser state and its EMA, and gathers one block's weights at a time for a forward or backward (PyTorch's FSDP2,
`fully_shard`).

It is applied here, not through accelerate's FSDP plugin: accelerate turns its plugin on only for GPU-like process
groups (a CPU launch is MULTI_CPU there and FSDP stays off), so the code could not be proven on CPUs; `fully_shard`
runs on gloo and NCCL alike, and it is what accelerate's plugin calls for fsdp_version 2. The checkpoint keeps the
layout every reader of a run knows (full model and EMA files, gathered on the main process) and adds the sharded
optimiser states in torch.distributed.checkpoint's format (`optimizer_shards/`), which only a launch of the same
number of processes resumes.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from bench.errors import UsageError

# The blocks of every family's denoiser that are sharded (gathered) as a unit; the rest of a network is one more unit.
BLOCKS = ("BasicTransformerBlock", "JointTransformerBlock", "ResnetBlock2D")
OPTIMIZER_SHARDS = "optimizer_shards"
# What torch.distributed.checkpoint's index pickles besides its own metadata records and torch's dtypes.
INDEX_RECORDS = frozenset({("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("pathlib", "PosixPath"),
                           ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict")})


def mesh():
    """All processes of the launch, on this process's device type."""
    from torch.distributed.device_mesh import init_device_mesh

    from bench.processes import process_state

    state = process_state()
    return init_device_mesh(state.device.type, (state.num_processes,))


def shard(module: nn.Module, device_mesh) -> nn.Module:
    """`module` sharded in place: each of its blocks a unit, then the whole. The whole is resharded after its
    forward too (FSDP2 keeps a root gathered until its backward by default): an evaluation's forward has no
    backward, and the EMA swaps weights shard by shard around it."""
    from torch.distributed.fsdp import fully_shard

    for block in [m for m in module.modules() if type(m).__name__ in BLOCKS]:
        fully_shard(block, mesh=device_mesh)
    fully_shard(module, mesh=device_mesh, reshard_after_forward=True)
    return module


def is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every process (a collective for a shard: every process must call it)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A whole tensor cut as `like` is cut (every process holds `value`)."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(like.device, like.dtype), like.device_mesh, like.placements) \
        if is_sharded(like) else value


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's whole state dict on the main process (empty elsewhere); every process takes part."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """A whole state dict (every process holds it) cut into the module's shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))


def save_optimizers(folder: Path, pairs: dict[str, tuple[nn.Module, torch.optim.Optimizer]]) -> None:
    """Each process writes its shards of the optimisers' states (torch.distributed.checkpoint). An optimiser that has
    not stepped yet is left out: asked for its state, torch fills it with a step of zero gradients, whose `step`
    counter of 1 would shift Adam's bias correction from then on (measured: a first step sqrt(2) too long)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    stepped = {name: pair for name, pair in pairs.items() if pair[1].state}
    if stepped:
        dcp.save({name: get_optimizer_state_dict(*pair) for name, pair in stepped.items()},
                 checkpoint_id=str(folder / OPTIMIZER_SHARDS))


def load_optimizers(folder: Path, pairs: dict[str, tuple[nn.Module, torch.optim.Optimizer]]) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    shards = folder / OPTIMIZER_SHARDS
    if not shards.exists():  # saved before any step
        return
    reader = records_only_reader(shards)
    saved = {key.split(".")[0] for key in reader.read_metadata().state_dict_metadata}
    states = {name: get_optimizer_state_dict(*pairs[name]) for name in saved}
    dcp.load(states, storage_reader=reader)
    for name in saved:
        set_optimizer_state_dict(*pairs[name], states[name])


class RecordsOnly(pickle.Unpickler):
    """torch.distributed.checkpoint's index (`.metadata`) is a pickle, and torch reads it with plain pickle: a
    checkpoint from elsewhere could run code on resume. This reads the plain records torch writes there and refuses
    anything else (its tensor files torch already reads weights-only)."""

    def find_class(self, module: str, name: str):
        if (module == "torch.distributed.checkpoint.metadata" or (module, name) in INDEX_RECORDS
                or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))):
            return super().find_class(module, name)
        raise UsageError(f"the optimiser shards' index holds {module}.{name}, which this suite never writes and will "
                         "not unpickle; resume only from checkpoints this suite wrote")


def records_only_reader(shards: Path):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            with open(shards / ".metadata", "rb") as handle:
                metadata = RecordsOnly(handle).load()
            metadata.storage_meta = metadata.storage_meta or StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return Reader(str(shards))


def state_bytes(modules: list[nn.Module], optimisers: list[torch.optim.Optimizer], ema: dict) -> int:
    """Bytes this process holds of the trained state: trainable weights, their gradients (as many), the optimisers'
    states and the EMA. Counted from the tensors themselves, shards as they are."""
    weights = sum(local(p).nbytes for module in modules for p in module.parameters() if p.requires_grad)
    states = sum(local(value).nbytes for optimiser in optimisers for state in optimiser.state.values()
                 for value in state.values() if torch.is_tensor(value) and value.dim())
    return 2 * weights + states + sum(local(p).nbytes for p in ema.values())
