"""FSDP2 sharding of a causal LM over the processes of a ``torch.distributed`` group.

Each decoder layer is one FSDP unit (its parameters gathered for its forward and backward
only), then the rest of the model (embeddings, final norm, LM head) is the root unit: the
layout accelerate's FSDP plugin and open-unlearning's DeepSpeed ZeRO-3 use, without wrapping
the module (``fully_shard`` shards in place, so sites and hooks find the layers where they
were).
"""

from __future__ import annotations

import torch

from .sites import decoder_layers


def shard(model: torch.nn.Module, mesh=None) -> torch.nn.Module:
    """``model`` sharded in place over ``mesh`` (default: every process of the group, on the
    model's device type); returns it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from ..distributed import data_parallel

    if mesh is None:
        mesh = init_device_mesh(next(model.parameters()).device.type, (data_parallel()[1],))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights of a sharded (or whole) model, on the CPU, in every process."""
    from torch.distributed.tensor import DTensor

    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu()
            for k, v in model.state_dict().items()}
