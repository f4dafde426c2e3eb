"""Pre-allocated key/value cache for incremental decoding.

Layout, per layer i: ``k[i]``, ``v[i]`` of shape [B, Hkv_local, max_len, D] (Hkv_local =
KV heads on this TP rank), keys already rotated by RoPE at their own positions. Slots
``0 .. length-1`` are filled for every row: rows of different prompt lengths are
left-padded, so one ``length`` serves the whole batch and padding slots are excluded by
the mask through ``document_ids`` (-1 = padding), which the cache stores alongside:
``document_ids [B, max_len]``.

A forward step with Q new tokens (see `GPT.forward(kv_cache=...)`):
  1. ``begin_step(document_ids [B, Q])`` records the new tokens' documents and returns
     the mask metadata for slots ``0 .. length+Q-1`` (queries sit at ``q_offset=length``);
  2. each layer calls ``layer(i).update(k_new, v_new)``, which writes slots
     ``length .. length+Q-1`` and returns views of slots ``0 .. length+Q-1``;
  3. ``end_step()`` advances ``length`` by Q.
"""

from __future__ import annotations

import torch


class KVCacheOverflow(RuntimeError):
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
        self.length = 0
        self._step_len: int | None = None

    @property
    def num_layers(self) -> int:
        return len(self.k)

    @property
    def batch_size(self) -> int:
        return self.document_ids.shape[0]

    def begin_step(self, document_ids: torch.Tensor) -> torch.Tensor:
        """Record document ids [B, Q] of the new tokens; return those of slots [0, length+Q)."""
        if self._step_len is not None:
            raise RuntimeError("KVCache.begin_step called twice without end_step")
        b, q = document_ids.shape
        if b != self.batch_size:
            raise ValueError(f"KV cache holds {self.batch_size} rows, the step has {b}")
        if self.length + q > self.max_len:
            raise KVCacheOverflow(f"KV cache of {self.max_len} slots is full: {self.length} used, "
                                  f"{q} more requested")
        self.document_ids[:, self.length:self.length + q] = document_ids
        self._step_len = q
        return self.document_ids[:, :self.length + q]

    def layer(self, index: int) -> "LayerKVCache":
        return LayerKVCache(self, index)

    def end_step(self) -> None:
        if self._step_len is None:
            raise RuntimeError("KVCache.end_step called without begin_step")
        self.length += self._step_len
        self._step_len = None


class LayerKVCache:
    """One layer's view of a `KVCache` during a step."""

    def __init__(self, cache: KVCache, index: int):
        self.cache, self.index = cache, index

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, Hkv_local, Q, D] after the cached slots; return all slots so far."""
        cache = self.cache
        if cache._step_len != k.shape[2]:
            raise RuntimeError(f"layer {self.index}: {k.shape[2]} new keys but the step "
                               f"announced {cache._step_len} (call begin_step first)")
        start, end = cache.length, cache.length + k.shape[2]
        cache.k[self.index][:, :, start:end] = k
        cache.v[self.index][:, :, start:end] = v
        return cache.k[self.index][:, :, :end], cache.v[self.index][:, :, :end]
