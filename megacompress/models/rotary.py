"""Rotary position embeddings (RoPE) at explicit per-token positions.

Positions are given as ``position_ids [B, S]`` rather than assumed to be ``0..S-1``:
packed documents restart at 0, left-padded generation rows start at different offsets,
and the methods' caches keep tokens at their original positions.

Convention: the "rotate half" (GPT-NeoX / Llama) layout. For head dimension D, pair
``(x[i], x[i + D/2])`` is rotated by angle ``pos * theta^(-2i/D)``, i < D/2.

``scaling`` (`ModelConfig.rope_scaling`) ``{"rope_type": "llama3", ...}`` rescales those
frequencies as Llama-3.1 does (Hugging Face's ``_compute_llama3_parameters``): with
wavelength ``w = 2 pi / f`` and ``L = original_max_position_embeddings``, frequencies with
``w < L / high_freq_factor`` stay, those with ``w > L / low_freq_factor`` are divided by
``factor``, and the ones between are interpolated with ``s = (L / w - low) / (high - low)``:
``(1 - s) f / factor + s f``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def rope_inv_freq(head_dim: int, theta: float = 10000.0, scaling: dict | None = None) -> torch.Tensor:
    """The D/2 rotation frequencies (fp64), with ``scaling`` applied (module docstring)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if scaling is None:
        return inv_freq
    if scaling.get("rope_type") != "llama3":
        raise ValueError(f"unsupported rope_scaling {scaling!r} (only rope_type 'llama3')")
    factor, low, high = (float(scaling[k]) for k in ("factor", "low_freq_factor", "high_freq_factor"))
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Computes the ``(cos, sin)`` tables for a batch of positions, shared by all layers."""

    def __init__(self, head_dim: int, theta: float = 10000.0, scaling: dict | None = None):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary head_dim must be even, got {head_dim}")
        inv_freq = rope_inv_freq(head_dim, theta, scaling)
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
