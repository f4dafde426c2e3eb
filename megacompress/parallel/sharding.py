"""Split full tensors into TP shards and gather them back (no autograd).

A TP-sharded tensor of full shape ``[..., N, ...]`` along ``partition_dim`` holds,
on TP rank ``r`` of ``tp``, the contiguous block ``[r * N/tp, (r+1) * N/tp)`` of that
dimension (``partition_stride`` is always 1 here: no interleaved shards).
Used by initialisation (every rank draws the full weight, keeps its block) and by
tests / checkpoint export (gather the blocks back into the full tensor).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megacompress.parallel import state


def divide(numerator: int, denominator: int, what: str) -> int:
    """``numerator / denominator`` or a clear error when it is not an integer."""
    if numerator % denominator:
        raise ValueError(f"{what} ({numerator}) is not divisible by the tensor-parallel size ({denominator})")
    return numerator // denominator


def shard(full: torch.Tensor, dim: int, rank: int | None = None, world_size: int | None = None) -> torch.Tensor:
    """This TP rank's contiguous block of ``full`` along ``dim`` (a copy, contiguous)."""
    rank = state.get_tensor_parallel_rank() if rank is None else rank
    world_size = state.get_tensor_parallel_world_size() if world_size is None else world_size
    size = divide(full.shape[dim], world_size, f"dimension {dim} of a tensor of shape {tuple(full.shape)}")
    return full.narrow(dim, rank * size, size).clone().contiguous()


def gather(local: torch.Tensor, dim: int) -> torch.Tensor:
    """Concatenate the TP shards of ``local`` along ``dim`` (every TP rank gets the full tensor)."""
    world_size = state.get_tensor_parallel_world_size()
    if world_size == 1:
        return local.detach().clone()
    parts = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(parts, local.detach().contiguous(), group=state.get_tensor_parallel_group())
    return torch.cat(parts, dim=dim)


def gather_parameter(param: torch.Tensor) -> torch.Tensor:
    """The full tensor of a parameter: gathered along ``partition_dim`` if TP-sharded, else a copy."""
    if getattr(param, "tensor_model_parallel", False):
        return gather(param, param.partition_dim)
    return param.detach().clone()


def set_tensor_parallel_attributes(param: torch.Tensor, partition_dim: int) -> None:
    """Mark ``param`` as TP-sharded along ``partition_dim`` (attributes DeepSpeed also reads)."""
    param.tensor_model_parallel = True
    param.partition_dim = partition_dim
    param.partition_stride = 1
