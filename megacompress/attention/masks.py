"""Attention mask functions and the mask-kind registry: one function per pattern, used by every backend.

A *mask function* has FlexAttention's ``mask_mod`` signature::

    mask_fn(b, h, q_idx, kv_idx) -> bool tensor      # True = query may attend to key

and uses only tensor indexing and elementwise ops, so the same function

* is a Flex ``mask_mod`` (called under ``vmap`` with 0-d index tensors),
* materialises a dense ``[B, 1, Q, KV]`` boolean mask when called with broadcast
  ``arange`` index tensors (:func:`dense`, used by SDPA and by the tests).

A *mask kind* is a named factory registered with :func:`register_mask_kind`. This module
registers the two generic kinds, ``causal`` and ``document_causal``; a method registers its
own kinds in its package (docs/architecture.md, "Adding a method"). A factory takes
``document_ids`` (int64 ``[B, S]``, ``-1`` = padding; see docs/architecture.md, "Samples and
batches") and the keyword tensors the kind declares as its ``metadata``, which the model
passes explicitly to ``AttentionMask.build``. ``q_idx`` / ``kv_idx`` are absolute positions in
the sample (decode steps shift ``q_idx`` with :func:`with_q_offset`). Documents are contiguous
runs of equal ``document_ids``.

Padding rule (identical in every backend and every kind, through :func:`same_document`):
every pattern also requires ``kv <= q``, equal document ids and a non-padding query; a
*padding query* (``document_ids[q] == -1``) attends to itself only, so its row is never
empty (no NaN in forward or backward) and its output is ``v[q]``. Padding keys are never
visible to real queries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from megacompress import plugins

MaskFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]



@dataclass(frozen=True)
class MaskKind:
    """A registered mask pattern.

    ``factory(document_ids, **metadata) -> MaskFn`` (``factory()`` when ``needs_documents`` is
    False); ``metadata``: the names of the keyword tensors it needs besides ``document_ids``.
    ``block_starts``: for a pattern that is block-diagonal-causal (contiguous blocks, causal
    inside each) — the only kind flash-attn's varlen kernel can express — a function
    ``(document_ids, **metadata) -> bool [B, S]``, True where a block starts *inside* a document
    (document starts and padding are added by the flash backend); ``None`` for other patterns.
    """

    name: str
    factory: Callable[..., MaskFn]
    metadata: tuple[str, ...] = ()
    needs_documents: bool = True
    block_starts: Callable[..., Tensor] | None = None

    @property
    def block_diagonal(self) -> bool:
        return self.block_starts is not None

    def build(self, document_ids: Tensor | None, metadata: dict[str, Tensor]) -> MaskFn:
        if not self.needs_documents:
            return self.factory()
        if document_ids is None:
            raise ValueError(f"mask kind {self.name!r}: document_ids is required")
        missing = [k for k in self.metadata if metadata.get(k) is None]
        if missing:
            raise ValueError(f"mask kind {self.name!r}: {' and '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} required")
        return self.factory(document_ids, **{k: metadata[k] for k in self.metadata})


_KINDS: dict[str, MaskKind] = {}


def register_mask_kind(name: str, factory: Callable[..., MaskFn], *, metadata: Iterable[str] = (),
                       needs_documents: bool = True, block_starts: Callable[..., Tensor] | None = None) -> MaskKind:
    """Add a mask kind (a name is registered once; the same factory again is a no-op)."""
    kind = MaskKind(name, factory, tuple(metadata), needs_documents, block_starts)
    known = _KINDS.get(name)
    if known is not None and known.factory is not factory:
        raise ValueError(f"mask kind {name!r} is already registered ({known.factory.__qualname__})")
    _KINDS[name] = kind
    return kind


def mask_kinds() -> list[str]:
    """Every registered kind, in registration order (the generic ones first)."""
    plugins.load_methods()
    return list(_KINDS)


def get_mask_kind(name: str) -> MaskKind:
    kind = plugins.lookup(_KINDS, name)
    if kind is None:
        raise ValueError(f"unknown attention mask kind {name!r}; registered: {', '.join(_KINDS)}")
    return kind


def check_ids(name: str, t: Tensor, ndim: int, *, bool_ok: bool = False) -> None:
    if not isinstance(t, Tensor) or t.dim() != ndim:
        raise ValueError(f"attention.masks: {name} must be a {ndim}-d tensor, got {getattr(t, 'shape', type(t))}")
    if bool_ok:
        if t.dtype != torch.bool:
            raise ValueError(f"attention.masks: {name} must be bool, got {t.dtype}")
    elif t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"attention.masks: {name} must be an integer tensor, got {t.dtype}")


def same_document(document_ids: Tensor, b: Tensor, q_idx: Tensor, kv_idx: Tensor, allowed: Tensor) -> Tensor:
    """``allowed`` restricted to real queries and keys of the query's document; padding queries see themselves."""
    q_doc = document_ids[b, q_idx]
    real = q_doc >= 0
    return (real & allowed & (document_ids[b, kv_idx] == q_doc)) | (~real & (q_idx == kv_idx))


def causal() -> MaskFn:
    """Plain causal mask ``kv <= q``; no metadata, no padding."""

    def causal_mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return kv_idx <= q_idx

    return causal_mask


def document_causal(document_ids: Tensor) -> MaskFn:
    """Causal within each document (packed samples), padding rule as in the module docstring."""
    check_ids("document_ids", document_ids, 2)

    def document_causal_mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return same_document(document_ids, b, q_idx, kv_idx, kv_idx <= q_idx)

    return document_causal_mask


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


def _no_block_starts(document_ids: Tensor) -> Tensor:
    return torch.zeros_like(document_ids, dtype=torch.bool)


register_mask_kind("causal", causal, needs_documents=False, block_starts=_no_block_starts)
register_mask_kind("document_causal", document_causal, block_starts=_no_block_starts)
