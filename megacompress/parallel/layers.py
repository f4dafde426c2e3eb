"""Tensor-parallel layers: column/row-parallel linear and vocab-parallel embedding.

Conventions (``tp`` = TP world size, ``r`` = TP rank):

* ``ColumnParallelLinear(in, out)``: weight ``[out/tp, in]`` (rows ``r*out/tp ...`` of
  the full ``[out, in]`` weight, ``partition_dim=0``). Input ``[..., in]`` replicated
  over TP; output ``[..., out/tp]`` (or ``[..., out]`` with ``gather_output=True``).
* ``RowParallelLinear(in, out)``: weight ``[out, in/tp]`` (``partition_dim=1``). Input
  ``[..., in/tp]`` (``input_is_parallel=True``, e.g. straight from a column layer) or
  ``[..., in]`` replicated; output ``[..., out]`` replicated (summed over TP).
* ``VocabParallelEmbedding(V, H)``: weight ``[Vp/tp, H]`` where ``Vp`` is ``V`` padded to
  a multiple of ``tp * vocab_multiple``; padding rows are zero. Input ids ``[...]``,
  output ``[..., H]`` replicated.

Biases: column biases are sharded like the output (``[out/tp]``); the row bias is
replicated and added once after the TP sum. Both start at zero.

Initialisation: ``weight ~ N(0, init_std^2)`` drawn in full from ``(init_seed,
seed_offset)`` (see ``megacompress.parallel.random``), so TP=k equals TP=1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megacompress.parallel import mappings, random, sequence, sharding, state


def padded_vocab_size(vocab_size: int, tensor_parallel_size: int, vocab_multiple: int = 1) -> int:
    """``vocab_size`` rounded up to a multiple of ``tensor_parallel_size * vocab_multiple``."""
    step = tensor_parallel_size * vocab_multiple
    return -(-vocab_size // step) * step


# Up to this many rows of ``x`` (a decode step's batch, a short prompt), `linear` takes the CPU route.
_FEW_ROWS = 64


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; in inference on CPU with few rows of ``x``, computed as
    ``(weight @ x^T)^T``.

    The same products and sums, a faster kernel: MKL's sgemm for ``x W^T`` with few rows of
    ``x`` ran at about half the speed of ``W x^T`` on our 2-core AMD EPYC (the tied LM head
    [16, 576] x [576, 49280]: 48 -> 30 ms; a SmolLM2-135M decode step at batch 16: 278 -> 158-190
    ms, logits bit-identical), and as fast at one row; from a few hundred rows the two run
    alike. Only without autograd (generation): under ZeRO-3 a weight released after the forward
    is gathered again for the backward by DeepSpeed's wrapper of ``F.linear``, not for a raw
    matmul. The result is made contiguous (a TP all-reduce needs that), cheap at few rows.
    """
    if x.device.type != "cpu" or torch.is_grad_enabled() or x.numel() > _FEW_ROWS * x.shape[-1]:
        return F.linear(x, weight, bias)
    y = (weight @ x.reshape(-1, x.shape[-1]).t()).t().contiguous().view(*x.shape[:-1], weight.shape[0])
    return y if bias is None else y + bias


def _tp_parameter(local: torch.Tensor, partition_dim: int) -> nn.Parameter:
    param = nn.Parameter(local)
    sharding.set_tensor_parallel_attributes(param, partition_dim)
    return param


class ColumnParallelLinear(nn.Module):
    """``y = x W^T (+ b)`` with ``W`` split by output rows over TP ranks."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False, gather_output: bool = False,
                 init_std: float = 0.02, init_seed: int = 0, seed_offset: int | str = 0,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        tp = state.get_tensor_parallel_world_size()
        self.in_features, self.out_features, self.gather_output = in_features, out_features, gather_output
        self.out_features_per_partition = sharding.divide(out_features, tp, "ColumnParallelLinear out_features")
        self.weight = _tp_parameter(
            random.normal_shard((out_features, in_features), 0, init_std, init_seed, seed_offset, dtype), 0)
        self.bias = _tp_parameter(torch.zeros(self.out_features_per_partition, dtype=dtype), 0) if bias else None

    def forward(self, x: torch.Tensor, seq_len: int | None = None) -> torch.Tensor:
        """``[..., in]`` (replicated) -> ``[..., out/tp]`` or, gathered, ``[..., out]``.

        ``seq_len`` (sequence parallelism): ``x`` is this rank's ``[B, S'/tp, in]`` chunk of a
        sequence of ``seq_len`` (`megacompress.parallel.sequence`); the output covers all of it.
        """
        if seq_len is not None:
            y = sequence.sequence_parallel_linear(x, seq_len, self.weight, self.bias)
        else:
            y = linear(mappings.copy_to_tp_region(x), self.weight, self.bias)
        return mappings.gather_from_tp_region(y) if self.gather_output else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features} "
                f"(local {self.out_features_per_partition}), bias={self.bias is not None}")


class RowParallelLinear(nn.Module):
    """``y = x W^T (+ b)`` with ``W`` split by input columns over TP ranks; partial sums all-reduced."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False, input_is_parallel: bool = True,
                 init_std: float = 0.02, init_seed: int = 0, seed_offset: int | str = 0,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        tp = state.get_tensor_parallel_world_size()
        self.in_features, self.out_features, self.input_is_parallel = in_features, out_features, input_is_parallel
        self.in_features_per_partition = sharding.divide(in_features, tp, "RowParallelLinear in_features")
        self.weight = _tp_parameter(
            random.normal_shard((out_features, in_features), 1, init_std, init_seed, seed_offset, dtype), 1)
        # Replicated over TP (not tensor_model_parallel): grad-norm counts it once.
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None

    def forward(self, x: torch.Tensor, sequence_parallel: bool = False) -> torch.Tensor:
        """``[..., in/tp]`` (or replicated ``[..., in]``) -> ``[..., out]`` replicated, or with
        ``sequence_parallel`` this rank's ``[B, S'/tp, out]`` chunk of the sum."""
        if not self.input_is_parallel:
            x = mappings.scatter_to_tp_region(x)
        if sequence_parallel:  # the bias then meets one chunk per rank: its gradient is summed over TP
            y = sequence.reduce_scatter_to_sequence_region(linear(x, self.weight))
            return y + mappings.copy_to_tp_region(self.bias) if self.bias is not None else y
        y = mappings.reduce_from_tp_region(linear(x, self.weight))
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features} (local {self.in_features_per_partition}), "
                f"out_features={self.out_features}, bias={self.bias is not None}")


class VocabParallelEmbedding(nn.Module):
    """Embedding table split by vocabulary rows; each rank looks up its ids, the rest are zero, then TP sum."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, init_std: float = 0.02, init_seed: int = 0,
                 seed_offset: int | str = 0, vocab_multiple: int = 1, dtype: torch.dtype = torch.float32):
        super().__init__()
        tp, rank = state.get_tensor_parallel_world_size(), state.get_tensor_parallel_rank()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padded_num_embeddings = padded_vocab_size(num_embeddings, tp, vocab_multiple)
        self.num_embeddings_per_partition = self.padded_num_embeddings // tp
        self.vocab_start = rank * self.num_embeddings_per_partition
        self.vocab_end = self.vocab_start + self.num_embeddings_per_partition
        self.weight = _tp_parameter(
            random.normal_shard((num_embeddings, embedding_dim), 0, init_std, init_seed, seed_offset, dtype,
                                pad_to=self.padded_num_embeddings), 0)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[...]`` int64 ids in ``[0, num_embeddings)`` -> ``[..., H]`` replicated."""
        # Out-of-range ids would otherwise land on zero padding rows (or on no rank at
        # TP>1) and embed silently to zero: a tokenizer/model mismatch must fail loudly.
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.num_embeddings):
            raise ValueError(f"token ids must lie in [0, {self.num_embeddings}); got range "
                             f"[{int(input_ids.min())}, {int(input_ids.max())}] (tokenizer/model vocabulary mismatch?)")
        if state.get_tensor_parallel_world_size() == 1:
            return F.embedding(input_ids, self.weight)
        outside = (input_ids < self.vocab_start) | (input_ids >= self.vocab_end)
        local_ids = (input_ids - self.vocab_start).masked_fill(outside, 0)
        out = F.embedding(local_ids, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return mappings.reduce_from_tp_region(out)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim} (padded {self.padded_num_embeddings}, "
                f"local rows [{self.vocab_start}, {self.vocab_end}))")


def parallel_lm_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Output projection with a vocab-sharded weight (e.g. a tied ``VocabParallelEmbedding.weight``).

    ``hidden [..., H]`` replicated, ``weight [Vp/tp, H]`` -> ``logits_parallel [..., Vp/tp]``
    (this rank's vocabulary block; feed it to ``vocab_parallel_cross_entropy``).
    """
    return linear(mappings.copy_to_tp_region(hidden), weight)
