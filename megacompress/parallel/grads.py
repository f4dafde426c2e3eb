"""Gradient utilities that know about TP sharding: DP averaging, global norm, clipping.

Global norm over a TP x DP model: after DP averaging every DP replica holds the same
gradients, so the norm only needs the TP group. A parameter with
``tensor_model_parallel=True`` contributes its local shard on every TP rank (the
shards partition the full tensor); a replicated parameter (norm weights, a row bias)
is counted on TP rank 0 only. The squared sums are then all-reduced over TP, which
makes the result equal to the TP=1 norm of the full model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist

from megacompress.parallel import state


def _grads(parameters: Iterable[torch.nn.Parameter]) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    return [(p, p.grad) for p in parameters if p.grad is not None]


def all_reduce_data_parallel_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over the DP group in place (one flat all-reduce per dtype).

    Only needed without DeepSpeed (DeepSpeed's engine does this itself).
    """
    dp = state.get_data_parallel_world_size()
    if dp == 1:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for _, g in _grads(parameters):
        by_dtype.setdefault(g.dtype, []).append(g)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=state.get_data_parallel_group())
        flat.div_(dp)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def grad_norm(parameters: Iterable[torch.nn.Parameter], norm_type: float = 2.0) -> torch.Tensor:
    """Global gradient norm of the full (unsharded) model; same value on every rank of a TP group.

    Assumes gradients were already averaged over DP. Returns an fp32 scalar tensor.
    """
    pairs = _grads(parameters)
    tp_rank = state.get_tensor_parallel_rank()
    counted = [g for p, g in pairs if getattr(p, "tensor_model_parallel", False) or tp_rank == 0]
    device = pairs[0][1].device if pairs else torch.device("cpu")
    if math.isinf(norm_type):
        total = torch.stack([g.detach().abs().max().float() for g in counted]).max() if counted \
            else torch.zeros((), device=device)
        if state.get_tensor_parallel_world_size() > 1:
            dist.all_reduce(total, op=dist.ReduceOp.MAX, group=state.get_tensor_parallel_group())
        return total
    total = torch.zeros((), dtype=torch.float32, device=device)
    for g in counted:
        total += g.detach().float().norm(norm_type) ** norm_type
    if state.get_tensor_parallel_world_size() > 1:
        dist.all_reduce(total, group=state.get_tensor_parallel_group())
    return total ** (1.0 / norm_type)


def clip_grad_norm_(parameters: Iterable[torch.nn.Parameter], max_norm: float,
                    norm_type: float = 2.0) -> torch.Tensor:
    """Scale gradients in place so the global (TP-aware) norm is at most ``max_norm``; returns the norm before clipping."""
    parameters = list(parameters)
    total = grad_norm(parameters, norm_type)
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for _, g in _grads(parameters):
        g.mul_(scale.to(g.dtype))
    return total
