"""Rotary position embeddings (RoPE) at explicit per-token positions.

Positions are given as ``position_ids [B, S]`` rather than assumed to be ``0..S-1``:
packed documents restart at 0, left-padded generation rows start at different offsets,
and the methods' caches keep tokens at their original positions.

Convention: the "rotate half" (GPT-NeoX / Llama) layout. For head dimension D, pair
``(x[i], x[i + D/2])`` is rotated by angle ``pos * theta^(-2i/D)``, i < D/2.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Computes the ``(cos, sin)`` tables for a batch of positions, shared by all layers."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary head_dim must be even, got {head_dim}")
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        # Not persistent: derived from the config, so it is not part of saved weights.
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [B, S] int -> (cos, sin), each [B, 1, S, D] in ``dtype``.

        Angles are computed in fp32 whatever the activation dtype (bf16 positions beyond
        256 would be rounded).
        """
        angles = position_ids.to(torch.float32)[..., None] * self.inv_freq  # [B, S, D/2]
        angles = torch.cat((angles, angles), dim=-1)[:, None]  # [B, 1, S, D]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, S, D] by the tables from `RotaryEmbedding` ([B, 1, S, D])."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
