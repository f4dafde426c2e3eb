"""SDPA backend: ``torch.nn.functional.scaled_dot_product_attention`` with a dense bool mask.

The reference implementation and the CPU training path (it has a backward on
every device). The dense mask ``[B, 1, Q, KV]`` is built once per batch from the
mask function and broadcast over heads; a plain causal full-sequence mask uses
``is_causal=True`` with no mask tensor. GQA (``Hkv < Hq``) uses ``enable_gqa``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from megacompress.attention.masks import dense

if TYPE_CHECKING:
    from megacompress.attention.dispatch import AttentionMask


@dataclass(frozen=True)
class SDPAPrepared:
    """``dense_mask`` is bool ``[B, 1, Q, KV]`` (True = attend), or None for ``is_causal=True``."""

    mask: "AttentionMask"
    dense_mask: Tensor | None
    backend: str = "sdpa"

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=self.dense_mask,
            is_causal=self.dense_mask is None,
            enable_gqa=q.shape[1] != k.shape[1],
        )


def prepare(mask: "AttentionMask", device: torch.device) -> SDPAPrepared:
    if mask.is_plain_causal:
        return SDPAPrepared(mask, None)
    return SDPAPrepared(mask, dense(mask.mask_fn, mask.batch, mask.q_len, mask.kv_len, mask.q_offset, device))
