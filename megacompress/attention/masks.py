"""Attention mask functions: one function per pattern, usable by every backend.

A *mask function* has FlexAttention's ``mask_mod`` signature::

    mask_fn(b, h, q_idx, kv_idx) -> bool tensor      # True = query may attend to key

and uses only tensor indexing and elementwise ops, so the same function

* is a Flex ``mask_mod`` (called under ``vmap`` with 0-d index tensors),
* materialises a dense ``[B, 1, Q, KV]`` boolean mask when called with broadcast
  ``arange`` index tensors (:func:`dense`, used by SDPA and by the tests).

Factories close over per-sample ``[B, S]`` metadata (see docs/architecture.md,
"Samples and batches"): ``document_ids`` int64 (``-1`` = padding), ``eos_mask``
bool (True at sentence-end tokens), and for gist rows ``gist_start`` /
``gist_end`` int64 ``[B]`` (index of the first gist, index after the last gist; a
row without gists uses ``gist_start == gist_end >= S``, which makes it causal), or
``[B, S]``: each slot's own document's span, for rows that pack several gist prompts.
``q_idx`` / ``kv_idx`` are absolute positions in the sample (decode steps shift
``q_idx`` with :func:`with_q_offset`). Documents are contiguous runs of equal
``document_ids``.

Padding rule (identical in every backend): every pattern also requires
``kv <= q``, equal document ids and a non-padding query; a *padding query*
(``document_ids[q] == -1``) attends to itself only, so its row is never empty
(no NaN in forward or backward) and its output is ``v[q]``. Padding keys are
never visible to real queries.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

MaskFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]

# Patterns whose allowed set is block-diagonal-causal (contiguous blocks, causal
# inside each block): flash-attn varlen can express exactly these.
BLOCK_DIAGONAL_KINDS = frozenset({"causal", "document_causal", "gpthf_encoder"})


def _check_ids(name: str, t: Tensor, ndim: int, *, bool_ok: bool = False) -> None:
    if not isinstance(t, Tensor) or t.dim() != ndim:
        raise ValueError(f"attention.masks: {name} must be a {ndim}-d tensor, got {getattr(t, 'shape', type(t))}")
    if bool_ok:
        if t.dtype != torch.bool:
            raise ValueError(f"attention.masks: {name} must be bool, got {t.dtype}")
    elif t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"attention.masks: {name} must be an integer tensor, got {t.dtype}")


def _check_eos(document_ids: Tensor, eos_mask: Tensor) -> None:
    _check_ids("document_ids", document_ids, 2)
    _check_ids("eos_mask", eos_mask, 2, bool_ok=True)
    if eos_mask.shape != document_ids.shape:
        raise ValueError(
            f"attention.masks: eos_mask shape {tuple(eos_mask.shape)} != document_ids shape {tuple(document_ids.shape)}"
        )


def _check_gist(document_ids: Tensor, gist_start: Tensor, gist_end: Tensor) -> None:
    _check_ids("document_ids", document_ids, 2)
    per_slot = gist_start.dim() == 2
    _check_ids("gist_start", gist_start, 2 if per_slot else 1)
    _check_ids("gist_end", gist_end, 2 if per_slot else 1)
    shape = tuple(document_ids.shape) if per_slot else (document_ids.shape[0],)
    if tuple(gist_start.shape) != shape or tuple(gist_end.shape) != shape:
        raise ValueError(
            f"attention.masks: gist_start/gist_end must have shape [{document_ids.shape[0]}] (per row) or "
            f"{list(document_ids.shape)} (per slot), got {tuple(gist_start.shape)} / {tuple(gist_end.shape)}"
        )
    if bool((gist_start < 0).any()) or bool((gist_end < gist_start).any()):
        raise ValueError("attention.masks: need 0 <= gist_start <= gist_end in every row")
    # An empty gist span inside the sequence would silently act as the negative control.
    seq = document_ids.shape[1]
    if bool(((gist_start == gist_end) & (gist_start < seq)).any()):
        raise ValueError(f"attention.masks: a row without gists needs gist_start == gist_end >= {seq} "
                         "(the sequence length); an empty span inside the sequence is ambiguous")


def _span(span: Tensor, b: Tensor, q_idx: Tensor) -> Tensor:
    """The gist span bound that applies to query ``q_idx`` of row ``b`` (per row or per slot)."""
    return span[b] if span.dim() == 1 else span[b, q_idx]


def _same_document(document_ids: Tensor, b: Tensor, q_idx: Tensor, kv_idx: Tensor, allowed: Tensor) -> Tensor:
    """``allowed`` restricted to real queries and keys of the query's document; padding queries see themselves."""
    q_doc = document_ids[b, q_idx]
    real = q_doc >= 0
    return (real & allowed & (document_ids[b, kv_idx] == q_doc)) | (~real & (q_idx == kv_idx))


def sentence_ids(eos_mask: Tensor) -> Tensor:
    """``[B, S]`` int64: number of EOS tokens strictly before each position in its row.

    The EOS token belongs to the sentence it ends. Counting over the whole row
    instead of per document is equivalent wherever it is used, because the
    masks also require equal document ids and documents are contiguous.
    """
    eos = eos_mask.to(torch.int64)
    return torch.cumsum(eos, dim=1) - eos


def causal() -> MaskFn:
    """Plain causal mask ``kv <= q``; no metadata, no padding."""

    def causal_mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return kv_idx <= q_idx

    return causal_mask


def document_causal(document_ids: Tensor) -> MaskFn:
    """Causal within each document (packed samples), padding rule as in the module docstring."""
    _check_ids("document_ids", document_ids, 2)

    def document_causal_mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return _same_document(document_ids, b, q_idx, kv_idx, kv_idx <= q_idx)

    return document_causal_mask


def gpthf_encoder(document_ids: Tensor, eos_mask: Tensor) -> MaskFn:
    """GPTHF word-level encoder: causal within one sentence of one document (SPEC §1)."""
    _check_eos(document_ids, eos_mask)
    sent = sentence_ids(eos_mask)

    def gpthf_encoder_mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        allowed = (kv_idx <= q_idx) & (sent[b, kv_idx] == sent[b, q_idx])
        return _same_document(document_ids, b, q_idx, kv_idx, allowed)

    return gpthf_encoder_mask


def gpthf_body(document_ids: Tensor, eos_mask: Tensor) -> MaskFn:
    """GPTHF sentence-level body: a query sees itself and every earlier EOS of its document (SPEC §1)."""
    _check_eos(document_ids, eos_mask)

    def gpthf_body_mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        allowed = (kv_idx == q_idx) | ((kv_idx <= q_idx) & eos_mask[b, kv_idx])
        return _same_document(document_ids, b, q_idx, kv_idx, allowed)

    return gpthf_body_mask


def _after_gists_see_from(document_ids: Tensor, gist_start: Tensor, gist_end: Tensor,
                          first_visible: Tensor) -> MaskFn:
    """Causal + padding, except that queries ``q >= gist_end`` see only keys ``kv >= first_visible``
    (of the row, or of the query's slot: `_span`)."""
    _check_gist(document_ids, gist_start, gist_end)

    def mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        after_gists = q_idx >= _span(gist_end, b, q_idx)
        allowed = (kv_idx <= q_idx) & (~after_gists | (kv_idx >= _span(first_visible, b, q_idx)))
        return _same_document(document_ids, b, q_idx, kv_idx, allowed)

    return mask


def gist(document_ids: Tensor, gist_start: Tensor, gist_end: Tensor) -> MaskFn:
    """Gist mask (SPEC §2): queries ``q >= gist_end`` see only keys ``kv >= gist_start``; others are causal."""
    return _after_gists_see_from(document_ids, gist_start, gist_end, gist_start)


def gist_pos_control(document_ids: Tensor, gist_start: Tensor, gist_end: Tensor) -> MaskFn:
    """Gist positive control: plain causal + padding (no compression; upper bound)."""
    _check_gist(document_ids, gist_start, gist_end)
    return document_causal(document_ids)


def gist_neg_control(document_ids: Tensor, gist_start: Tensor, gist_end: Tensor) -> MaskFn:
    """Gist negative control: queries ``q >= gist_end`` see neither instruction nor gists (``kv >= gist_end``)."""
    return _after_gists_see_from(document_ids, gist_start, gist_end, gist_end)


def with_q_offset(mask_fn: MaskFn, q_offset: int | Tensor) -> MaskFn:
    """The mask for ``Q`` new queries at absolute positions ``q_offset..q_offset+Q-1`` (KV-cache decode).

    ``q_offset`` is one int for the whole batch or an int64 ``[B]`` tensor (a KV cache whose
    rows have different lengths): row b's queries then sit at ``q_offset[b] + i``.
    """
    if isinstance(q_offset, Tensor):

        def row_offset_mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return mask_fn(b, h, q_idx + q_offset[b], kv_idx)

        return row_offset_mask
    if q_offset == 0:
        return mask_fn

    def offset_mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return mask_fn(b, h, q_idx + q_offset, kv_idx)

    return offset_mask


def dense(
    mask_fn: MaskFn, B: int, Q: int, KV: int, q_offset: int | Tensor = 0, device: torch.device | str | None = None
) -> Tensor:
    """Materialise ``mask_fn`` as a bool tensor ``[B, 1, Q, KV]`` (row i = absolute query ``q_offset + i``).

    The metadata the function closes over must cover positions ``< max(q_offset + Q, KV)``
    and live on ``device`` (default: CPU); a per-row ``q_offset`` tensor too.
    """
    b = torch.arange(B, device=device).view(B, 1, 1, 1)
    h = torch.zeros(1, 1, 1, 1, dtype=torch.int64, device=device)
    q = torch.arange(Q, device=device).view(1, 1, Q, 1)
    kv = torch.arange(KV, device=device).view(1, 1, 1, KV)
    return with_q_offset(mask_fn, q_offset)(b, h, q, kv).expand(B, 1, Q, KV)


FACTORIES: dict[str, Callable[..., MaskFn]] = {
    "causal": causal,
    "document_causal": document_causal,
    "gpthf_encoder": gpthf_encoder,
    "gpthf_body": gpthf_body,
    "gist": gist,
    "gist_pos_control": gist_pos_control,
    "gist_neg_control": gist_neg_control,
}
