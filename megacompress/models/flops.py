"""Parameter counts and FLOPs per token of the decoder in `megacompress.models.gpt`.

Notation: L layers, H hidden, Hq / Hkv query / key-value heads, D = H / Hq head dim,
F FFN hidden, V vocabulary, S sequence length.

Parameters (exactly what ``sum(p.numel())`` of a TP=1 `GPT` gives; Vp = padded V):
    per layer   = 2H (two RMSNorm gains) + H(Hq + 2Hkv)D (qkv) + Hq D H (out) + 3HF (SwiGLU)
                  [+ (Hq + 2Hkv)D with ``qkv_bias``; bias adds count no FLOPs]
    total       = Vp H (embedding) + L per_layer + H (final norm) [+ Vp H if untied head]

FLOPs per token (a multiply-add counts 2; norms, RoPE, softmax are ignored):
    matmul weights N = L (H(Hq + 2Hkv)D + Hq D H + 3HF) + V H   (LM head; no embedding lookup)
    forward        = 2N + 4 L S H f
    training       = 3 x forward = 6N + 12 L S H f
where ``4 L S H`` is QK^T plus AV for a query against S keys, and f is the fraction of
(query, key) pairs that the attention kernel computes: f = 1 for a dense kernel (the
PaLM / Megatron MFU convention, default), ~(S+1)/(2S) for a causal kernel that skips
masked blocks, and `attended_fraction(mask)` for a custom mask.

A cached GPT pays 2N + 4 L H c for one generated token with a context of c tokens
including the new one (`decode_flops`). An architecture whose layers see other keys
counts them with `forward_flops` in its method package.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils import flop_counter

from megacompress.models.config import ModelConfig


@dataclass(frozen=True)
class ParamCount:
    embedding: int      # padded vocab rows x hidden
    per_layer: int
    num_layers: int
    final_norm: int
    lm_head: int        # 0 when tied to the embedding

    @property
    def total(self) -> int:
        return self.embedding + self.num_layers * self.per_layer + self.final_norm + self.lm_head

    @property
    def non_embedding(self) -> int:
        """Parameters outside the embedding and LM head (Kaplan et al.'s N)."""
        return self.total - self.embedding - self.lm_head


def count_parameters(config: ModelConfig, tp_size: int = 1) -> ParamCount:
    """Unsharded parameter count of `GPT(config)` built for TP size ``tp_size``."""
    h, d = config.hidden_size, config.head_dim
    attention = h * (config.num_heads + 2 * config.num_kv_heads) * d + config.num_heads * d * h
    qkv_bias = (config.num_heads + 2 * config.num_kv_heads) * d if config.qkv_bias else 0
    per_layer = 2 * h + attention + qkv_bias + 3 * h * config.ffn_hidden_size
    embedding = config.padded_vocab_size(tp_size) * h
    return ParamCount(embedding=embedding, per_layer=per_layer, num_layers=config.num_layers,
                      final_norm=h, lm_head=0 if config.tie_embeddings else embedding)


def matmul_parameters(config: ModelConfig) -> int:
    """N of the FLOPs formula: weights that take part in a matmul per token (real vocab)."""
    h, d = config.hidden_size, config.head_dim
    per_layer = (h * (config.num_heads + 2 * config.num_kv_heads) * d + config.num_heads * d * h
                 + 3 * h * config.ffn_hidden_size)
    return config.num_layers * per_layer + config.vocab_size * h


def flops_per_token(config: ModelConfig, seq_len: int | None = None, *,
                    attention_fraction: float = 1.0, training: bool = True) -> float:
    """Model FLOPs per token: 6N + 12 L S H f for training, 2N + 4 L S H f forward only."""
    if not 0.0 <= attention_fraction <= 1.0:
        raise ValueError(f"attention_fraction must be in [0, 1], got {attention_fraction}")
    seq_len = config.max_seq_len if seq_len is None else seq_len
    forward = forward_flops(config, config.num_layers * seq_len * attention_fraction)
    return 3 * forward if training else forward


def forward_flops(config: ModelConfig, layer_keys: float) -> float:
    """2N + 4 H x (keys attended per query, summed over layers)."""
    return 2 * matmul_parameters(config) + 4 * config.hidden_size * layer_keys


def decode_flops(config: ModelConfig, context_len: int = 0) -> float:
    """Forward FLOPs of one generated token of one row with a KV cache: ``context_len`` keys in every layer."""
    return forward_flops(config, config.num_layers * context_len)


def attended_fraction(mask: torch.Tensor) -> float:
    """Fraction of True entries of a dense boolean mask [B, 1, Q, KV] (the f above)."""
    if mask.dtype != torch.bool:
        raise TypeError(f"expected a boolean mask, got {mask.dtype}")
    return mask.float().mean().item()


def _cpu_sdpa_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter_mode() -> flop_counter.FlopCounterMode:
    """`torch.utils.flop_counter.FlopCounterMode` that also counts CPU attention.

    torch counts the CUDA SDPA kernels but not the CPU one that masked SDPA runs
    (``_scaled_dot_product_flash_attention_for_cpu``); it gets torch's own SDPA formulas.
    """
    aten = torch.ops.aten
    return flop_counter.FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
    })
