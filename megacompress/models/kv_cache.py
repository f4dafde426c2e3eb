"""Pre-allocated key/value cache for incremental decoding, with a length per row.

Layout, per layer i: ``k[i]``, ``v[i]`` of shape [B, Hkv_local, max_len, D] (Hkv_local =
KV heads on this TP rank), keys already rotated by RoPE at their own positions (the
cache never sees positions: a caller that restarts a row or loads stored K/V passes
the ``position_ids`` it wants to the model). Row b holds its entries in slots
``0 .. lengths[b]-1``; ``document_ids [B, max_len]`` holds each slot's document id and
``-1`` for every slot that is not a valid entry, which is how masks see per-row
lengths (a ``-1`` key is invisible to every real query, docs/attention.md).

Rows are independent: they append at different steps, a row can be reset, and a row can
start from K/V given by the caller (`load`). That is what the methods' caches need: one
that appends only when a sentence ends, one reset at each sentence end, one that starts
from stored K/V of a prefix.

A forward step with Q new tokens per row (see `GPT.forward(kv_cache=...)`):
  1. ``begin_step(document_ids [B, Q], commit=None)`` puts row b's new tokens in slots
     ``lengths[b] .. lengths[b]+Q-1`` and returns the mask metadata of slots
     ``0 .. max(lengths)+Q-1`` and the per-row query offsets ``lengths`` (an int when all
     rows are equally long);
  2. each layer calls ``layer(i).update(k_new, v_new)``, which writes those slots and
     returns views of slots ``0 .. max(lengths)+Q-1``;
  3. ``end_step()`` advances ``lengths[b]`` by Q for the rows in ``commit`` (default:
     all) and clears the new slots of the other rows: they attended to the cache and to
     their own new tokens, but keep nothing (e.g. a cache that appends only at a sentence end).
"""

from __future__ import annotations

import torch
from torch import Tensor

from megacompress.errors import UserError


class KVCacheOverflow(UserError, RuntimeError):
    """More tokens were fed than the cache was allocated for."""


class KVCache:
    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int,
                 max_len: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.document_ids = torch.full((batch_size, max_len), -1, dtype=torch.long, device=device)
        self.max_len = max_len
        # Host copy: slot ranges and kv_len are Python ints (no device sync per step).
        self._lengths = torch.zeros(batch_size, dtype=torch.long)
        self._step: tuple[int, Tensor | None] | None = None  # (Q, commit rows) between begin and end

    @property
    def num_layers(self) -> int:
        return len(self.k)

    @property
    def batch_size(self) -> int:
        return self.document_ids.shape[0]

    @property
    def lengths(self) -> Tensor:
        """Valid entries per row, int64 [B] (CPU)."""
        return self._lengths.clone()

    def nbytes(self) -> int:
        """Bytes held by the valid entries' keys and values (all layers, this TP rank)."""
        per_slot = sum(t[:, :, :1].nelement() * t.element_size() for t in self.k + self.v) // self.batch_size
        return int(self._lengths.sum()) * per_slot

    def _rows(self, rows: Tensor | list[int] | None) -> Tensor:
        """Row selection (indices or a bool mask [B]) -> int64 row indices (CPU)."""
        if rows is None:
            return torch.arange(self.batch_size)
        rows = torch.as_tensor(rows).cpu()
        if rows.dtype == torch.bool:
            if rows.shape != (self.batch_size,):
                raise ValueError(f"KV cache row mask has shape {tuple(rows.shape)}, expected [{self.batch_size}]")
            return rows.nonzero().flatten()
        if rows.numel() and not (0 <= int(rows.min()) and int(rows.max()) < self.batch_size):
            raise IndexError(f"KV cache rows {rows.tolist()} out of range for {self.batch_size} rows")
        return rows.long().flatten()

    def _write(self, layer: int, rows: Tensor, starts: Tensor, k: Tensor, v: Tensor) -> None:
        """k/v [len(rows), H, Q, D] into slots ``starts[r] .. starts[r]+Q-1`` of each row."""
        device = self.document_ids.device
        slots = (starts[:, None] + torch.arange(k.shape[2])).to(device)  # [R, Q]
        # Advanced indices around a slice put their dims first: the target is [R, Q, H, D].
        index = (rows.to(device)[:, None], slice(None), slots)
        self.k[layer][index] = k.transpose(1, 2)
        self.v[layer][index] = v.transpose(1, 2)

    # ------------------------------------------------------------------ forward steps
    def begin_step(self, document_ids: Tensor,
                   commit: Tensor | list[int] | None = None) -> tuple[Tensor, int | Tensor]:
        """Record document ids [B, Q] of the new tokens.

        Returns ``(slot_document_ids [B, kv_len], q_offset)``: the metadata of slots
        ``0 .. kv_len-1`` (kv_len = max(lengths) + Q) and where each row's queries sit
        (an int when all rows have the same length, else int64 [B] on the cache's device).
        ``commit`` (row indices or a bool mask; default all rows) says which rows keep
        their new entries at `end_step`.
        """
        if self._step is not None:
            raise RuntimeError("KVCache.begin_step called twice without end_step")
        b, q = document_ids.shape
        if b != self.batch_size:
            raise ValueError(f"KV cache holds {self.batch_size} rows, the step has {b}")
        kv_len = int(self._lengths.max()) + q
        if kv_len > self.max_len:
            raise KVCacheOverflow(f"KV cache of {self.max_len} slots is full: {int(self._lengths.max())} used, "
                                  f"{q} more requested")
        rows = torch.arange(b)
        slots = (self._lengths[:, None] + torch.arange(q)).to(self.document_ids.device)
        self.document_ids[rows.to(slots.device)[:, None], slots] = document_ids.to(self.document_ids.device)
        self._step = (q, None if commit is None else self._rows(commit))
        uniform = bool((self._lengths == self._lengths[0]).all())
        offset = int(self._lengths[0]) if uniform else self._lengths.to(self.document_ids.device)
        return self.document_ids[:, :kv_len], offset

    def layer(self, index: int) -> "LayerKVCache":
        return LayerKVCache(self, index)

    def end_step(self) -> None:
        if self._step is None:
            raise RuntimeError("KVCache.end_step called without begin_step")
        q, commit = self._step
        self._step = None
        if commit is None:
            self._lengths += q
            return
        keep = torch.zeros(self.batch_size, dtype=torch.bool)
        keep[commit] = True
        for row in (~keep).nonzero().flatten().tolist():
            start = int(self._lengths[row])
            self.document_ids[row, start:start + q] = -1
        self._lengths[keep] += q

    # ------------------------------------------------------------------ row edits
    def reset(self, rows: Tensor | list[int] | None = None) -> None:
        """Empty the given rows (default all): length 0, every slot invalid."""
        if self._step is not None:
            raise RuntimeError("KVCache.reset inside a step (between begin_step and end_step)")
        rows = self._rows(rows)
        self.document_ids[rows.to(self.document_ids.device)] = -1
        self._lengths[rows] = 0

    def load(self, keys: list[Tensor], values: list[Tensor], lengths: Tensor | list[int],
             rows: Tensor | list[int] | None = None, document_ids: Tensor | None = None) -> None:
        """Start ``rows`` (default all) from stored entries instead of running the model on them.

        ``keys[i]`` / ``values[i]``: layer i's [R, Hkv_local, L, D] (R = number of rows,
        keys rotated as the model rotated them); row r keeps its first ``lengths[r]`` slots.
        ``document_ids`` [R, L] (default 0: one document) must be >= 0 on the kept slots.
        The rows' previous entries are dropped.
        """
        if self._step is not None:
            raise RuntimeError("KVCache.load inside a step (between begin_step and end_step)")
        rows = self._rows(rows)
        lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
        if len(keys) != self.num_layers or len(values) != self.num_layers:
            raise ValueError(f"KVCache.load: got {len(keys)} / {len(values)} layers, the cache has {self.num_layers}")
        r, length = len(rows), keys[0].shape[2]
        expected = (r, self.k[0].shape[1], length, self.k[0].shape[3])
        for i, (k, v) in enumerate(zip(keys, values)):
            if tuple(k.shape) != expected or k.shape != v.shape:
                raise ValueError(f"KVCache.load: layer {i} keys {tuple(k.shape)} / values {tuple(v.shape)}, "
                                 f"expected {expected}")
        if lengths.shape != (r,) or bool((lengths < 0).any()) or bool((lengths > length).any()):
            raise ValueError(f"KVCache.load: lengths {lengths.tolist()} must be [{r}] values in 0..{length}")
        if length > self.max_len:
            raise KVCacheOverflow(f"KVCache.load: {length} slots do not fit a cache of {self.max_len}")
        device = self.document_ids.device
        docs = torch.zeros(r, length, dtype=torch.long) if document_ids is None else document_ids.long().cpu()
        valid = torch.arange(length)[None, :] < lengths[:, None]
        if docs.shape != (r, length) or bool((docs[valid] < 0).any()):
            raise ValueError(f"KVCache.load: document_ids must be [{r}, {length}] and >= 0 on the kept slots")
        self.reset(rows)
        for i in range(self.num_layers):
            self._write(i, rows, torch.zeros(r, dtype=torch.long), keys[i], values[i])
        self.document_ids[rows.to(device), :length] = docs.masked_fill(~valid, -1).to(device)
        self._lengths[rows] = lengths


class LayerKVCache:
    """One layer's view of a `KVCache` during a step."""

    def __init__(self, cache: KVCache, index: int):
        self.cache, self.index = cache, index

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v [B, Hkv_local, Q, D] after each row's entries; return slots 0..max(lengths)+Q-1."""
        cache = self.cache
        if cache._step is None or cache._step[0] != k.shape[2]:
            announced = None if cache._step is None else cache._step[0]
            raise RuntimeError(f"layer {self.index}: {k.shape[2]} new keys but the step "
                               f"announced {announced} (call begin_step first)")
        cache._write(self.index, torch.arange(cache.batch_size), cache._lengths, k, v)
        end = int(cache._lengths.max()) + k.shape[2]
        return cache.k[self.index][:, :, :end], cache.v[self.index][:, :, :end]
