"""Autograd functions that move activations into and out of the TP region.

Each forward collective has the adjoint collective in backward:

=========================  ===========================  ===========================
function                   forward                      backward
=========================  ===========================  ===========================
copy_to_tp_region          identity                     all-reduce (sum) over TP
reduce_from_tp_region      all-reduce (sum) over TP     identity
gather_from_tp_region      all-gather last dim          keep own block of last dim
scatter_to_tp_region       keep own block of last dim   all-gather last dim
=========================  ===========================  ===========================

Shapes: ``gather`` maps ``[..., H/tp] -> [..., H]`` and ``scatter`` the reverse (block
``r`` of the last dimension belongs to TP rank ``r``). With TP size 1 all four are the
identity and never touch ``torch.distributed``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megacompress.parallel import sharding, state


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    if state.get_tensor_parallel_world_size() == 1:
        return x
    x = x.contiguous().clone()  # out of place: the caller's tensor may be saved for backward
    dist.all_reduce(x, group=state.get_tensor_parallel_group())
    return x


def _split_last_dim(x: torch.Tensor) -> torch.Tensor:
    if state.get_tensor_parallel_world_size() == 1:
        return x
    return sharding.shard(x, x.dim() - 1)


def _gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    if state.get_tensor_parallel_world_size() == 1:
        return x
    return sharding.gather(x, x.dim() - 1)


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad)


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _all_reduce(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _GatherFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _gather_last_dim(x)

    @staticmethod
    def backward(ctx, grad):
        return _split_last_dim(grad)


class _ScatterToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _split_last_dim(x)

    @staticmethod
    def backward(ctx, grad):
        return _gather_last_dim(grad)


def copy_to_tp_region(x: torch.Tensor) -> torch.Tensor:
    """Enter a TP region with a replicated input: identity forward, all-reduce of grads backward."""
    return _CopyToTP.apply(x)


def reduce_from_tp_region(x: torch.Tensor) -> torch.Tensor:
    """Leave a TP region by summing partial results: all-reduce forward, identity backward."""
    return _ReduceFromTP.apply(x)


def gather_from_tp_region(x: torch.Tensor) -> torch.Tensor:
    """``[..., H/tp] -> [..., H]``: all-gather forward, keep own block backward."""
    return _GatherFromTP.apply(x)


def scatter_to_tp_region(x: torch.Tensor) -> torch.Tensor:
    """``[..., H] -> [..., H/tp]``: keep own block forward, all-gather backward."""
    return _ScatterToTP.apply(x)
