"""flash-attn varlen backend for block-diagonal-causal masks (CUDA, fp16/bf16).

``flash_attn_varlen_func`` attends causally inside contiguous segments of a flat
token stream. The block-diagonal kinds map onto segments of the flattened
``[B * S]`` batch:

* ``causal``: one segment per row;
* ``document_causal``: runs of equal ``document_ids``;
* any other registered kind with ``block_starts``: runs of equal document, cut further
  where its ``block_starts`` says (e.g. after every sentence end);
* padding (``document_ids == -1``): every padding token is its own length-1
  segment, which is exactly the shared padding rule (a padding query sees itself).

``cu_seqlens`` (int32 ``[N + 1]``) holds the segment starts plus the total
``B * S``; ``max_seqlen`` is the longest segment. Other kinds (no ``block_starts``)
and decode steps cannot be expressed and raise ``ValueError``. flash-attn is
imported lazily (``pip install 'megacompress[gpu]'`` on a CUDA machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from megacompress.attention import masks

if TYPE_CHECKING:
    from megacompress.attention.dispatch import AttentionMask


def segment_starts(mask: "AttentionMask", device: torch.device | str | None = None) -> Tensor:
    """Bool ``[B, S]``: True where a new segment of the flattened batch begins (see module docstring)."""
    kind = masks.get_mask_kind(mask.kind)
    if not kind.block_diagonal:
        block_kinds = [k for k in masks.mask_kinds() if masks.get_mask_kind(k).block_diagonal]
        raise ValueError(
            f"attention backend 'flash' cannot express mask {mask.kind!r} (only {block_kinds}); "
            "use backend='flex' or 'sdpa'"
        )
    if not mask.is_full_sequence:
        raise ValueError(
            f"attention backend 'flash' supports only full-sequence masks, got {mask.kind!r} with "
            f"q_offset={mask.q_offset}, q_len={mask.q_len}, kv_len={mask.kv_len}; use 'sdpa' or 'flex' for decoding"
        )
    B, S = mask.batch, mask.kv_len
    starts = torch.zeros(B, S, dtype=torch.bool, device=device)
    starts[:, 0] = True
    if not kind.needs_documents:
        return starts
    doc = mask.document_ids[:, :S].to(device)
    starts[:, 1:] |= doc[:, 1:] != doc[:, :-1]
    starts |= doc < 0
    return starts | kind.block_starts(doc, **{k: t[:, :S].to(device) for k, t in mask.metadata.items()})


def varlen_metadata(mask: "AttentionMask", device: torch.device | str | None = None) -> tuple[Tensor, int]:
    """``(cu_seqlens int32 [N + 1], max_seqlen)`` for the flattened ``[B * S]`` batch."""
    starts = segment_starts(mask, device).flatten()
    total = starts.numel()
    begin = torch.nonzero(starts).flatten()
    cu_seqlens = torch.cat([begin, begin.new_tensor([total])]).to(torch.int32)
    return cu_seqlens, int((cu_seqlens[1:] - cu_seqlens[:-1]).max())


@dataclass(frozen=True)
class FlashPrepared:
    mask: "AttentionMask"
    cu_seqlens: Tensor
    max_seqlen: int
    backend: str = "flash"

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(
                f"attention backend 'flash' needs CUDA fp16/bf16 tensors, got {q.device.type} {q.dtype}"
            )
        from flash_attn import flash_attn_varlen_func

        B, Hq, S, D = q.shape
        # [B, H, S, D] -> [B * S, H, D]: the flat token stream the segments index.
        q2, k2, v2 = (t.transpose(1, 2).reshape(B * S, t.shape[1], D) for t in (q, k, v))
        out = flash_attn_varlen_func(
            q2, k2, v2, self.cu_seqlens, self.cu_seqlens, self.max_seqlen, self.max_seqlen, causal=True
        )
        return out.view(B, S, Hq, D).transpose(1, 2)


def prepare(mask: "AttentionMask", device: torch.device) -> FlashPrepared:
    cu_seqlens, max_seqlen = varlen_metadata(mask, device)  # raises ValueError for unsupported masks
    if device.type != "cuda":
        raise ValueError(f"attention backend 'flash' runs only on CUDA, got device {device}")
    try:
        import flash_attn  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "attention backend 'flash' needs the flash-attn package: pip install 'megacompress[gpu]' on a CUDA machine"
        ) from exc
    return FlashPrepared(mask, cu_seqlens, max_seqlen)
