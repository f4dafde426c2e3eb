"""The ``chunk_causal`` mask kind: causal inside fixed-size chunks of each document.

A slot's chunk is ``(slot - start of its document's run in the row) // chunk_size``: the same
as ``position // chunk_size`` for the layouts megacompress uses (dataset samples, whose
positions restart with every document piece; left-padded prompts; KV-cache slots). The mask
closes over ``document_ids`` and ``chunk_ids`` (int64 ``[B, S]``, `chunk_ids`) and obeys the
shared padding rule (`megacompress.attention.masks.same_document`). Block-diagonal: a block
starts wherever the chunk id changes inside a document.
"""

from __future__ import annotations

import torch
from torch import Tensor

from megacompress.attention.masks import MaskFn, check_ids, register_mask_kind, same_document

KIND = "chunk_causal"


def chunk_ids(document_ids: Tensor, chunk_size: int) -> Tensor:
    """``[B, S]`` int64: each slot's chunk index inside its run of equal document ids."""
    check_ids("document_ids", document_ids, 2)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, s = document_ids.shape
    index = torch.arange(s, device=document_ids.device).expand(b, s)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    run_start = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return torch.div(index - run_start, chunk_size, rounding_mode="floor")


def _check(document_ids: Tensor, chunk_ids: Tensor) -> None:
    check_ids("document_ids", document_ids, 2)
    check_ids("chunk_ids", chunk_ids, 2)
    if chunk_ids.shape != document_ids.shape:
        raise ValueError(f"attention.masks: chunk_ids shape {tuple(chunk_ids.shape)} != document_ids shape "
                         f"{tuple(document_ids.shape)}")


def chunk_causal(document_ids: Tensor, chunk_ids: Tensor) -> MaskFn:
    """A query sees the earlier keys of its own chunk of its own document."""
    _check(document_ids, chunk_ids)

    def chunk_causal_mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        allowed = (kv_idx <= q_idx) & (chunk_ids[b, kv_idx] == chunk_ids[b, q_idx])
        return same_document(document_ids, b, q_idx, kv_idx, allowed)

    return chunk_causal_mask


def chunk_block_starts(document_ids: Tensor, chunk_ids: Tensor) -> Tensor:
    """True where a chunk starts inside a document (document starts are the backend's)."""
    starts = torch.zeros_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = (chunk_ids[:, 1:] != chunk_ids[:, :-1]) & (document_ids[:, 1:] == document_ids[:, :-1])
    return starts


register_mask_kind(KIND, chunk_causal, metadata=("chunk_ids",), block_starts=chunk_block_starts)
