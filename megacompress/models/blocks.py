"""Transformer building blocks: RMSNorm, SwiGLU MLP, attention, pre-norm block, stack.

Tensor conventions: hidden states ``x [B, S, H]`` (replicated on every TP rank);
attention heads ``[B, heads, S, D]``. With sequence parallelism (a stack's
``sequence_parallel``, set by the engine) the hidden states between a stack's entry and exit
are each TP rank's ``[B, S'/tp, H]`` chunk of the sequence (`megacompress.parallel.sequence`):
norms and residual adds run on the chunk, column-parallel layers gather it, row-parallel
layers reduce-scatter into it. Tensor parallelism (Megatron style): the qkv and
SwiGLU gate/up projections are column-parallel (each TP rank computes its own heads /
FFN slice), the attention output and SwiGLU down projections are row-parallel (partial
sums all-reduced), so one block costs two all-reduces of ``[B, S, H]`` forward.

The attention mask is prepared once per batch (`megacompress.attention.dispatch.prepare`)
and passed to every layer; a stack does not know which pattern it runs, which is what
lets the methods' models (several stacks, other masks) reuse these blocks unchanged.

Every module takes ``(config, seed, prefix)``: ``prefix`` is its parameter-name prefix in
the model (e.g. ``"stack.layers.3.mlp"``) and keys the initialisation stream of its
weights (`megacompress.parallel.random`), so weights depend only on (seed, name).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from megacompress.attention import dispatch
from megacompress.models.config import ModelConfig
from megacompress.models.rotary import apply_rotary
from megacompress.parallel import mappings, sequence, state
from megacompress.parallel.layers import ColumnParallelLinear, RowParallelLinear
from megacompress.parallel.sharding import divide

if TYPE_CHECKING:
    from megacompress.models.kv_cache import KVCache, LayerKVCache

Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each [B, 1, S, D]


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32 (weight initialised to 1)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor, sequence_parallel: bool = False) -> torch.Tensor:
        # On a sequence chunk the weight's gradient is this rank's part: summed over TP in backward.
        weight = mappings.copy_to_tp_region(self.weight) if sequence_parallel else self.weight
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (normed * weight.float()).to(x.dtype)


def _output_std(config: ModelConfig) -> float:
    # GPT-2 / Megatron: projections that write into the residual stream are scaled by
    # 1/sqrt(2 L) so the residual variance does not grow with depth.
    return config.init_std / math.sqrt(2 * config.num_layers)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); gate/up column-parallel, down row-parallel. [B,S,H]->[B,S,H]."""

    def __init__(self, config: ModelConfig, seed: int, prefix: str):
        super().__init__()
        h, f = config.hidden_size, config.ffn_hidden_size
        self.gate = ColumnParallelLinear(h, f, init_std=config.init_std, init_seed=seed, seed_offset=f"{prefix}.gate")
        self.up = ColumnParallelLinear(h, f, init_std=config.init_std, init_seed=seed, seed_offset=f"{prefix}.up")
        self.down = RowParallelLinear(f, h, init_std=_output_std(config), init_seed=seed, seed_offset=f"{prefix}.down")

    def forward(self, x: torch.Tensor, seq_len: int | None = None) -> torch.Tensor:
        """``seq_len``: sequence parallel, ``x`` a chunk of that sequence, and so is the output."""
        return self.down(F.silu(self.gate(x, seq_len)) * self.up(x, seq_len), sequence_parallel=seq_len is not None)


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention with RoPE, heads split over TP ranks.

    The fused qkv weight's output dimension is laid out per KV group:
    ``[group g: q heads g*r .. g*r+r-1, k head g, v head g] x D`` with r = Hq / Hkv, so
    a contiguous column-parallel split hands every TP rank whole groups (this is why
    both head counts must be divisible by the TP size). With ``config.qkv_bias`` the fused
    bias has the same layout and is split over TP ranks like the weight's rows.
    """

    def __init__(self, config: ModelConfig, seed: int, prefix: str):
        super().__init__()
        tp = state.get_tensor_parallel_world_size()
        self.head_dim = config.head_dim
        self.q_per_kv = config.num_heads // config.num_kv_heads
        self.num_kv_heads_local = divide(config.num_kv_heads, tp, "num_kv_heads")
        self.num_heads_local = self.num_kv_heads_local * self.q_per_kv
        qkv_out = (config.num_heads + 2 * config.num_kv_heads) * self.head_dim
        self.qkv = ColumnParallelLinear(config.hidden_size, qkv_out, bias=config.qkv_bias, init_std=config.init_std,
                                        init_seed=seed, seed_offset=f"{prefix}.qkv")
        self.out = RowParallelLinear(config.num_heads * self.head_dim, config.hidden_size,
                                     init_std=_output_std(config), init_seed=seed, seed_offset=f"{prefix}.out")
        # The attention core (q, k, v, mask) -> y as one replaceable call: selective activation
        # recompute wraps it from outside (`megacompress.training.recompute`).
        self.core = dispatch.attend

    def forward(self, x: torch.Tensor, rope: Rope, mask: dispatch.PreparedMask,
                kv_cache: LayerKVCache | None = None, seq_len: int | None = None) -> torch.Tensor:
        """x [B, S, H] -> [B, S, H]; with ``kv_cache`` keys/values attend over cached slots too;
        with ``seq_len`` (sequence parallel) x and the output are [B, S'/tp, H] chunks of it."""
        b, s = x.shape[0], seq_len or x.shape[1]
        groups = self.qkv(x, seq_len).view(b, s, self.num_kv_heads_local, self.q_per_kv + 2, self.head_dim)
        q = groups[:, :, :, :self.q_per_kv].reshape(b, s, self.num_heads_local, self.head_dim)
        k, v = groups[:, :, :, -2], groups[:, :, :, -1]  # [B, S, Hkv_local, D]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # -> [B, heads, S, D]
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)
        y = self.core(q, k, v, mask)  # [B, Hq_local, S, D]
        return self.out(y.transpose(1, 2).reshape(b, s, self.num_heads_local * self.head_dim),
                        sequence_parallel=seq_len is not None)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, config: ModelConfig, seed: int, prefix: str):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.attn = Attention(config, seed, f"{prefix}.attn")
        self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = SwiGLU(config, seed, f"{prefix}.mlp")

    def forward(self, x: torch.Tensor, rope: Rope, mask: dispatch.PreparedMask,
                kv_cache: LayerKVCache | None = None, seq_len: int | None = None) -> torch.Tensor:
        """``seq_len``: sequence parallel (x is this rank's chunk of a sequence that long)."""
        sp = seq_len is not None
        x = x + self.attn(self.attn_norm(x, sp), rope, mask, kv_cache, seq_len)
        return x + self.mlp(self.mlp_norm(x, sp), seq_len)


class TransformerStack(nn.Module):
    """A list of blocks run with one prepared mask and one set of RoPE tables.

    ``kv_cache`` (a `megacompress.models.kv_cache.KVCache` with one entry per block
    of this stack, ``begin_step`` already called) is threaded through layer by layer.
    ``sequence_parallel`` (off; the engine's ``parallel.sequence_parallel`` turns it on):
    with TP > 1 and no KV cache the stack splits the sequence over the TP ranks at entry and
    gathers it at exit, so its input and output stay replicated ``[B, S, H]``.
    """

    def __init__(self, config: ModelConfig, num_layers: int, seed: int, prefix: str):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerBlock(config, seed, f"{prefix}.{i}") for i in range(num_layers))
        self.sequence_parallel = False

    def forward(self, x: torch.Tensor, rope: Rope, mask: dispatch.PreparedMask,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        if kv_cache is not None and kv_cache.num_layers != len(self.layers):
            raise ValueError(f"KV cache has {kv_cache.num_layers} layers, the stack {len(self.layers)}")
        if self.sequence_parallel and kv_cache is None and state.get_tensor_parallel_world_size() > 1:
            seq_len = x.shape[1]
            x = sequence.scatter_to_sequence_region(x)
            for layer in self.layers:
                x = layer(x, rope, mask, seq_len=seq_len)
            return sequence.gather_from_sequence_region(x, seq_len)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, mask, None if kv_cache is None else kv_cache.layer(i))
        return x
