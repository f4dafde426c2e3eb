"""Sequence parallelism (Megatron's scheme): the TP group also splits the sequence.

Without it every TP rank holds the whole ``[B, S, H]`` hidden state between the
column- and row-parallel regions: the norms, the residual stream and their saved
activations are replicated ``tp`` times. With it a rank holds the chunk
``[B, S'/tp, H]`` of those regions, where ``S'`` is ``S`` padded with zero rows to a
multiple of ``tp`` (the padding rows never reach attention and are dropped at the end):

=================================  ==================================  ================================
function                           forward                             backward
=================================  ==================================  ================================
scatter_to_sequence_region         pad, keep own chunk of S'           all-gather chunks, drop padding
gather_from_sequence_region        all-gather chunks, drop padding     pad, keep own chunk
sequence_parallel_linear           all-gather, drop padding, x W^T     re-gather x; reduce-scatter dx
reduce_scatter_to_sequence_region  pad, reduce-scatter (sum) over TP   all-gather, drop padding
=================================  ==================================  ================================

``sequence_parallel_linear`` replaces ``copy_to_tp_region`` + a column-parallel linear:
it saves only this rank's chunk for backward and gathers it again there (the activation
saving: the gathered ``[B, S, H]`` would otherwise be kept by every column layer). Each
column layer gathers for itself, inside its own module call (ZeRO-3 gathers a module's
weights around that call), so SwiGLU's separate gate and up gather their input twice.
``reduce_scatter_to_sequence_region`` replaces the row-parallel layer's all-reduce. The
gradient of a replicated parameter used on a chunk (a norm's weight) is a partial sum:
use it through ``mappings.copy_to_tp_region`` so backward adds the ranks' parts.
Tensors are batch-first; the sequence is dimension 1. With TP size 1 every function is
the identity (``sequence_parallel_linear`` a plain linear).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megacompress.parallel import state

SEQ_DIM = 1


def _tp() -> int:
    return state.get_tensor_parallel_world_size()


def _pad(x: torch.Tensor) -> torch.Tensor:
    """``x`` with zero rows appended along the sequence up to a multiple of the TP size."""
    extra = -x.shape[SEQ_DIM] % _tp()
    return F.pad(x, (0, 0, 0, extra)) if extra else x


def _own_chunk(x: torch.Tensor) -> torch.Tensor:
    """This rank's chunk of the padded sequence (``x`` not yet padded)."""
    return _pad(x).chunk(_tp(), SEQ_DIM)[state.get_tensor_parallel_rank()].contiguous()


def _all_gather(chunk: torch.Tensor, seq_len: int) -> torch.Tensor:
    parts = [torch.empty_like(chunk) for _ in range(_tp())]
    dist.all_gather(parts, chunk.contiguous(), group=state.get_tensor_parallel_group())
    return torch.cat(parts, SEQ_DIM).narrow(SEQ_DIM, 0, seq_len)


def _reduce_scatter(x: torch.Tensor) -> torch.Tensor:
    parts = [c.contiguous() for c in _pad(x).chunk(_tp(), SEQ_DIM)]
    out = torch.empty_like(parts[0])
    dist.reduce_scatter(out, parts, group=state.get_tensor_parallel_group())
    return out


class _IntoChunks(torch.autograd.Function):
    """``[B, S, H]`` -> this rank's chunk: kept (``reduce`` False) or summed over TP (True).
    Either way the gradient of the chunks is gathered back (each rank's chunk has its own)."""

    @staticmethod
    def forward(ctx, x, reduce):
        ctx.seq_len = x.shape[SEQ_DIM]
        return _reduce_scatter(x) if reduce else _own_chunk(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.seq_len), None


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, chunk, seq_len):
        return _all_gather(chunk, seq_len)

    @staticmethod
    def backward(ctx, grad):
        return _own_chunk(grad), None


class _GatheredLinear(torch.autograd.Function):
    """``(chunk, seq_len, weight, bias) -> gather(chunk) weight^T + bias``, saving only ``chunk``."""

    @staticmethod
    def forward(ctx, chunk, seq_len, weight, bias):
        ctx.seq_len, ctx.has_bias = seq_len, bias is not None
        ctx.save_for_backward(chunk, weight)
        return F.linear(_all_gather(chunk, seq_len), weight, bias)

    @staticmethod
    def backward(ctx, grad):
        chunk, weight = ctx.saved_tensors
        x = _all_gather(chunk, ctx.seq_len)  # gathered again rather than kept: the saving
        grad_2d = grad.reshape(-1, grad.shape[-1])
        grad_weight = grad_2d.t() @ x.reshape(-1, x.shape[-1])
        return (_reduce_scatter(grad @ weight), None, grad_weight,
                grad_2d.sum(0) if ctx.has_bias else None)


def scatter_to_sequence_region(x: torch.Tensor) -> torch.Tensor:
    """``[B, S, H]`` (the same on every TP rank) -> this rank's ``[B, S'/tp, H]`` chunk."""
    return x if _tp() == 1 else _IntoChunks.apply(x, False)


def gather_from_sequence_region(chunk: torch.Tensor, seq_len: int) -> torch.Tensor:
    """``[B, S'/tp, H]`` chunks -> ``[B, seq_len, H]`` on every rank, whose gradient is the same on every rank."""
    return chunk if _tp() == 1 else _Gather.apply(chunk, seq_len)


def reduce_scatter_to_sequence_region(x: torch.Tensor) -> torch.Tensor:
    """Partial sums ``[B, S, H]`` (a row-parallel product) -> this rank's chunk of their sum."""
    return x if _tp() == 1 else _IntoChunks.apply(x, True)


def sequence_parallel_linear(chunk: torch.Tensor, seq_len: int, weight: torch.Tensor,
                             bias: torch.Tensor | None = None) -> torch.Tensor:
    """Column-parallel product ``[B, seq_len, out/tp]`` of the gathered ``[B, S'/tp, in]`` chunks."""
    if _tp() == 1:
        return F.linear(chunk, weight, bias)
    return _GatheredLinear.apply(chunk, seq_len, weight, bias)
