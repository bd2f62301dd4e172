"""Where this process stands in a ``torch.distributed`` group (``torchrun``, ``accelerate
launch``), and the collectives the training loop and evaluation use. Outside a group every
function here is the one-process identity, so nothing else needs to know.

Two ways a model lives in a group of W processes:

- **replicated**: every process holds the whole model; the training loop sums the gradients
  across processes after each step's backward passes (what DDP does, without wrapping the
  module, so hooks, sites and copies see the model as it is);
- **sharded** with FSDP2 (``torch.distributed.fsdp.fully_shard``, ``subject/sharding.py``): each
  process holds a shard of every parameter (``DTensor``), gathered layer by layer for the
  forward pass; the backward pass reduce-scatters the gradients itself.
"""

from __future__ import annotations

import os

from .errors import UserInputError

# torch is imported inside the functions: the CLI asks ``launched()`` before any command, and
# ``--help`` imports no torch


def data_parallel() -> tuple[int, int]:
    """``(rank, world size)`` of the ``torch.distributed`` group this process is in; ``(0, 1)``
    outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_sharded(model) -> bool:
    """Whether ``model``'s parameters are FSDP2 shards (``DTensor``)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _collective_device(device):
    import torch
    import torch.distributed as dist

    return device if dist.get_backend() == "nccl" else torch.device("cpu")  # NCCL: device tensors; gloo: host


def sum_across(t):
    """``t`` summed over the group's processes (``t`` itself outside a group); a new tensor
    on ``t``'s device."""
    import torch.distributed as dist

    if data_parallel()[1] == 1:
        return t.clone()
    out = t.detach().to(_collective_device(t.device), copy=True)
    dist.all_reduce(out)
    return out.to(t.device)


def sum_gradients(params: list) -> None:
    """Replace each parameter's gradient by its sum over the group (a missing one counts as
    zeros: a process that drew no batch for it)."""
    import torch

    if data_parallel()[1] == 1:
        return
    for p in params:
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        p.grad = sum_across(g)


def launched() -> bool:
    """Whether a launcher (``torchrun``, ``accelerate launch``) started this process as one of
    several: ``WORLD_SIZE`` > 1 in the environment."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def join_group() -> None:
    """Join the launcher's process group (NCCL with a GPU per process, else gloo), once."""
    import torch
    import torch.distributed as dist

    if not launched() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def leave_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process of the group (nothing outside one)."""
    import torch.distributed as dist

    if data_parallel()[1] > 1:
        dist.barrier()


def check_shared_steps(grad_accum_steps: int) -> None:
    """In a group of W processes each step's micro-batches are shared among them
    (``training/loop.py``): refuse a count W does not divide."""
    world = data_parallel()[1]
    if world > 1 and grad_accum_steps % world:
        raise UserInputError(f"{world} processes share each step's micro-batches: give grad_accum_steps a multiple "
                             f"of {world} (not {grad_accum_steps}), e.g. --param grad_accum_steps={world}")
