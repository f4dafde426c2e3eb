"""The gist masks (docs/gist.md, "Masks"), registered as mask kinds ``gist``,
``gist_pos_control`` and ``gist_neg_control``.

Each closes over ``document_ids`` and the gist span: ``gist_start`` / ``gist_end`` int64
``[B]`` (index of a row's first gist, index after its last; a row without gists uses
``gist_start == gist_end >= S``, which makes it causal), or ``[B, S]``: each slot's own
document's span, for rows that pack several gist prompts. All obey the shared padding rule
(`megacompress.attention.masks.same_document`).
"""

from __future__ import annotations

from torch import Tensor

from megacompress.attention.masks import MaskFn, check_ids, document_causal, register_mask_kind, same_document

SPAN = ("gist_start", "gist_end")

def _check_gist(document_ids: Tensor, gist_start: Tensor, gist_end: Tensor) -> None:
    check_ids("document_ids", document_ids, 2)
    per_slot = gist_start.dim() == 2
    check_ids("gist_start", gist_start, 2 if per_slot else 1)
    check_ids("gist_end", gist_end, 2 if per_slot else 1)
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

def _after_gists_see_from(document_ids: Tensor, gist_start: Tensor, gist_end: Tensor,
                          first_visible: Tensor) -> MaskFn:
    """Causal + padding, except that queries ``q >= gist_end`` see only keys ``kv >= first_visible``
    (of the row, or of the query's slot: `_span`)."""
    _check_gist(document_ids, gist_start, gist_end)

    def mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        after_gists = q_idx >= _span(gist_end, b, q_idx)
        allowed = (kv_idx <= q_idx) & (~after_gists | (kv_idx >= _span(first_visible, b, q_idx)))
        return same_document(document_ids, b, q_idx, kv_idx, allowed)

    return mask

def gist(document_ids: Tensor, gist_start: Tensor, gist_end: Tensor) -> MaskFn:
    """The gist mask: queries ``q >= gist_end`` see only keys ``kv >= gist_start``; others are causal."""
    return _after_gists_see_from(document_ids, gist_start, gist_end, gist_start)

def gist_pos_control(document_ids: Tensor, gist_start: Tensor, gist_end: Tensor) -> MaskFn:
    """Gist positive control: plain causal + padding (no compression; upper bound)."""
    _check_gist(document_ids, gist_start, gist_end)
    return document_causal(document_ids)

def gist_neg_control(document_ids: Tensor, gist_start: Tensor, gist_end: Tensor) -> MaskFn:
    """Gist negative control: queries ``q >= gist_end`` see neither instruction nor gists (``kv >= gist_end``)."""
    return _after_gists_see_from(document_ids, gist_start, gist_end, gist_end)

register_mask_kind("gist", gist, metadata=SPAN)
register_mask_kind("gist_pos_control", gist_pos_control, metadata=SPAN)
register_mask_kind("gist_neg_control", gist_neg_control, metadata=SPAN)
