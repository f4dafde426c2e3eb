"""Backend choice and the single attention entry point used by the model.

Usage (once per batch, then in every layer)::

    mask = AttentionMask.build("document_causal", document_ids=ids)   # a kind's metadata as keywords
    prepared = prepare(mask, backend="auto", device=q.device)
    out = attend(q, k, v, prepared)      # q [B, Hq, Q, D], k/v [B, Hkv, KV, D] -> [B, Hq, Q, D]

Automatic choice (``backend="auto"``):

* plain causal full-sequence mask (``kind="causal"``, ``q_offset=0``, ``Q == KV``)
  -> ``sdpa`` with ``is_causal=True`` (no mask tensor), on every device;
* CPU -> ``sdpa`` with the dense boolean mask (the only CPU path with a backward);
* CUDA, block-diagonal kind (``MaskKind.block_diagonal``: ``document_causal`` and any
  registered kind that declares ``block_starts``), full sequence, flash-attn importable and ``dtype`` not float32 -> ``flash`` (varlen);
* CUDA decode step (queries after cached keys, ``q_len <= DECODE_SDPA_MAX_Q``) -> ``sdpa``
  with the dense mask: its ``[B, 1, Q, KV]`` mask is small, and Flex compiled with static
  shapes would recompile for every new key length (torch gives up after 8 and runs eager);
* otherwise CUDA -> ``flex``.

An explicit backend that cannot express the mask raises ``ValueError``; there is
no silent fallback. The choice is logged once per ``(kind, backend)``.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from megacompress.attention import flash, flex, masks, sdpa
from megacompress.attention.masks import MaskFn

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "sdpa", "flex", "flash")
# Longest query block that ``auto`` sends to dense SDPA on CUDA when it follows cached keys.
DECODE_SDPA_MAX_Q = 16
_LOGGED: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class AttentionMask:
    """A mask for one batch: the mask function plus what backends need besides it.

    ``mask_fn`` answers for absolute query positions; the ``q_len`` queries of this
    call sit at ``q_offset .. q_offset + q_len - 1`` and see keys ``0 .. kv_len - 1``.
    ``q_offset`` is an int, or an int64 ``[B]`` tensor when rows of a KV cache have
    different lengths (row b's queries at ``q_offset[b] ..``).
    ``document_ids`` and the kind's ``metadata`` tensors are kept for flash-attn's
    ``cu_seqlens`` (block-diagonal kinds only).
    """

    mask_fn: MaskFn
    batch: int
    q_len: int
    kv_len: int
    q_offset: int | Tensor = 0
    kind: str = "document_causal"
    document_ids: Tensor | None = None
    metadata: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        masks.get_mask_kind(self.kind)  # unknown kinds are an error naming the registered ones
        if isinstance(self.q_offset, Tensor) and self.q_offset.shape != (self.batch,):
            raise ValueError(f"AttentionMask: a per-row q_offset must have shape [{self.batch}], "
                             f"got {tuple(self.q_offset.shape)}")
        if min(self.batch, self.q_len, self.kv_len) < 1 or self.min_q_offset < 0:
            raise ValueError(
                f"AttentionMask: need batch, q_len, kv_len >= 1 and q_offset >= 0, got "
                f"batch={self.batch} q_len={self.q_len} kv_len={self.kv_len} q_offset={self.q_offset}"
            )
        if self.document_ids is not None:
            B, S = self.document_ids.shape
            if B != self.batch or max(self.kv_len, self.max_q_offset + self.q_len) > S:
                raise ValueError(
                    f"AttentionMask({self.kind}): metadata [{B}, {S}] does not cover batch={self.batch}, "
                    f"queries up to {self.max_q_offset + self.q_len}, keys up to {self.kv_len}"
                )

    @classmethod
    def build(
        cls,
        kind: str,
        *,
        document_ids: Tensor | None = None,
        batch: int | None = None,
        q_len: int | None = None,
        kv_len: int | None = None,
        q_offset: int | Tensor = 0,
        **metadata: Tensor | None,
    ) -> "AttentionMask":
        """Build the mask of ``kind`` from batch metadata (see :mod:`megacompress.attention.masks`).

        ``metadata``: the keyword tensors the kind declares (`masks.MaskKind.metadata`); others
        are ignored, so a caller may pass one batch's metadata to several kinds.
        Defaults: ``kv_len = S`` (the metadata length) and ``q_len = kv_len - q_offset``
        (an int ``q_offset``; a per-row one needs ``q_len``).
        ``causal`` needs no metadata but then needs ``batch`` and ``kv_len``.
        """
        spec = masks.get_mask_kind(kind)
        fn = spec.build(document_ids, metadata)
        metadata = {k: metadata[k] for k in spec.metadata} if spec.needs_documents else {}
        if document_ids is not None:
            batch = document_ids.shape[0] if batch is None else batch
            kv_len = document_ids.shape[1] if kv_len is None else kv_len
        if batch is None or kv_len is None:
            raise ValueError(f"AttentionMask.build({kind!r}): give batch and kv_len (or document_ids)")
        if q_len is None:
            if isinstance(q_offset, Tensor):
                raise ValueError(f"AttentionMask.build({kind!r}): a per-row q_offset needs q_len")
            q_len = kv_len - q_offset
        return cls(fn, batch, q_len, kv_len, q_offset, kind, document_ids, metadata)

    @property
    def min_q_offset(self) -> int:
        return int(self.q_offset.min()) if isinstance(self.q_offset, Tensor) else self.q_offset

    @property
    def max_q_offset(self) -> int:
        return int(self.q_offset.max()) if isinstance(self.q_offset, Tensor) else self.q_offset

    @property
    def is_plain_causal(self) -> bool:
        """True when SDPA's ``is_causal=True`` computes exactly this mask (no mask tensor needed)."""
        return self.kind == "causal" and self.is_full_sequence

    @property
    def is_full_sequence(self) -> bool:
        """True for a training/prefill call (queries are all positions), False for a decode step."""
        return not isinstance(self.q_offset, Tensor) and self.q_offset == 0 and self.q_len == self.kv_len

    @property
    def is_decode_step(self) -> bool:
        """A short block of queries after cached keys (see ``DECODE_SDPA_MAX_Q``)."""
        return not self.is_full_sequence and self.q_len <= DECODE_SDPA_MAX_Q


class PreparedMask(Protocol):
    """What :func:`prepare` returns: a backend's per-batch state, reused by every layer."""

    backend: str
    mask: AttentionMask

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor: ...


def flash_available() -> bool:
    """Whether the ``flash_attn`` package is importable (it is in the ``gpu`` extra)."""
    return importlib.util.find_spec("flash_attn") is not None


def choose_backend(mask: AttentionMask, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """The ``backend="auto"`` rule (module docstring)."""
    if mask.is_plain_causal or device.type != "cuda" or mask.is_decode_step:
        return "sdpa"
    if (
        masks.get_mask_kind(mask.kind).block_diagonal
        and mask.is_full_sequence
        and dtype != torch.float32
        and flash_available()
    ):
        return "flash"
    return "flex"


def prepare(
    mask: AttentionMask,
    backend: str = "auto",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> PreparedMask:
    """Per-batch preparation (dense mask / BlockMask / cu_seqlens) on ``device``.

    ``dtype`` (optional) is the q/k/v dtype, used only by ``auto`` to avoid flash for float32.
    """
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r} is not one of {BACKENDS}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    chosen = choose_backend(mask, device, dtype) if backend == "auto" else backend
    if (mask.kind, chosen) not in _LOGGED:
        _LOGGED.add((mask.kind, chosen))
        logger.info("attention: mask %s -> backend %s (requested %s, device %s)", mask.kind, chosen, backend, device)
    module = {"sdpa": sdpa, "flex": flex, "flash": flash}[chosen]
    return module.prepare(mask, device)


def attend(q: Tensor, k: Tensor, v: Tensor, prepared: PreparedMask) -> Tensor:
    """Masked attention: q ``[B, Hq, Q, D]``, k/v ``[B, Hkv, KV, D]`` (``Hq % Hkv == 0``) -> ``[B, Hq, Q, D]``."""
    m = prepared.mask
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"attend: expected q [B,Hq,Q,D], k = v [B,Hkv,KV,D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, Hq, Q, D = q.shape
    _, Hkv, KV, Dk = k.shape
    if (B, Q, KV) != (m.batch, m.q_len, m.kv_len) or k.shape[0] != B or Dk != D or Hq % Hkv:
        raise ValueError(
            f"attend: q {tuple(q.shape)} / k {tuple(k.shape)} do not match the {m.kind} mask "
            f"(batch={m.batch}, q_len={m.q_len}, kv_len={m.kv_len}) or Hq % Hkv != 0"
        )
    return prepared.attend(q, k, v)
