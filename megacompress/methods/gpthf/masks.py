"""GPTHF's two attention masks (docs/gpthf.md, "Masks"), registered as mask kinds.

Both close over ``document_ids`` and ``eos_mask`` (bool ``[B, S]``, True at sentence-end
tokens) and obey the shared padding rule (`megacompress.attention.masks.same_document`):

* ``gpthf_encoder``: causal within one sentence of one document (the word-level encoder).
  Block-diagonal, so flash-attn can run it: a new block starts right after every EOS.
* ``gpthf_body``: a query sees itself and every earlier EOS of its document (the
  sentence-level body).
"""

from __future__ import annotations

import torch
from torch import Tensor

from megacompress.attention.masks import MaskFn, check_ids, register_mask_kind, same_document


def _check_eos(document_ids: Tensor, eos_mask: Tensor) -> None:
    check_ids("document_ids", document_ids, 2)
    check_ids("eos_mask", eos_mask, 2, bool_ok=True)
    if eos_mask.shape != document_ids.shape:
        raise ValueError(
            f"attention.masks: eos_mask shape {tuple(eos_mask.shape)} != document_ids shape {tuple(document_ids.shape)}"
        )


def sentence_ids(eos_mask: Tensor) -> Tensor:
    """``[B, S]`` int64: number of EOS tokens strictly before each position in its row.

    The EOS token belongs to the sentence it ends. Counting over the whole row
    instead of per document is equivalent wherever it is used, because the
    masks also require equal document ids and documents are contiguous.
    """
    eos = eos_mask.to(torch.int64)
    return torch.cumsum(eos, dim=1) - eos


def gpthf_encoder(document_ids: Tensor, eos_mask: Tensor) -> MaskFn:
    """GPTHF word-level encoder: causal within one sentence of one document."""
    _check_eos(document_ids, eos_mask)
    sent = sentence_ids(eos_mask)

    def gpthf_encoder_mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        allowed = (kv_idx <= q_idx) & (sent[b, kv_idx] == sent[b, q_idx])
        return same_document(document_ids, b, q_idx, kv_idx, allowed)

    return gpthf_encoder_mask


def gpthf_body(document_ids: Tensor, eos_mask: Tensor) -> MaskFn:
    """GPTHF sentence-level body: a query sees itself and every earlier EOS of its document."""
    _check_eos(document_ids, eos_mask)

    def gpthf_body_mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        allowed = (kv_idx == q_idx) | ((kv_idx <= q_idx) & eos_mask[b, kv_idx])
        return same_document(document_ids, b, q_idx, kv_idx, allowed)

    return gpthf_body_mask


def _encoder_block_starts(document_ids: Tensor, eos_mask: Tensor) -> Tensor:
    """A new encoder block (sentence) starts right after every EOS."""
    starts = torch.zeros_like(eos_mask)
    starts[:, 1:] = eos_mask[:, :-1]
    return starts


register_mask_kind("gpthf_encoder", gpthf_encoder, metadata=("eos_mask",), block_starts=_encoder_block_starts)
register_mask_kind("gpthf_body", gpthf_body, metadata=("eos_mask",))
