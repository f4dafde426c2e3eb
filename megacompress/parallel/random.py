"""Deterministic, TP-invariant parameter initialisation.

Every rank draws the *full* (unsharded) weight on CPU from a ``torch.Generator``
seeded by ``(seed, key)`` and keeps its own block. Hence, for the same ``seed`` and
``key``, a model built at TP=k is exactly the TP=1 model split k ways, regardless of
the order in which parameters are created or how many ranks exist.

``key`` is a parameter name (``"layers.3.mlp.fc1"``) or an integer offset; the seed
of the generator is the first 8 bytes of ``sha256(f"{seed}/{key}")`` so distinct keys
give independent streams.
"""

from __future__ import annotations

import hashlib

import torch

from megacompress.parallel import sharding


def generator_for(seed: int, key: int | str) -> torch.Generator:
    """A CPU generator whose stream depends only on ``(seed, key)``."""
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen


def normal_full(shape: tuple[int, ...], std: float, seed: int, key: int | str,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The full ``N(0, std^2)`` tensor of ``shape`` for ``(seed, key)``, in fp32 then cast."""
    full = torch.empty(shape, dtype=torch.float32)
    full.normal_(0.0, std, generator=generator_for(seed, key))
    return full.to(dtype)


def normal_shard(full_shape: tuple[int, ...], partition_dim: int, std: float, seed: int, key: int | str,
                 dtype: torch.dtype = torch.float32, pad_to: int | None = None) -> torch.Tensor:
    """This TP rank's block of ``normal_full(full_shape, ...)`` along ``partition_dim``.

    ``pad_to``: zero-pad ``partition_dim`` to this size before sharding (vocab padding),
    so the real rows are identical for every TP size.
    """
    full = normal_full(full_shape, std, seed, key, dtype)
    if pad_to is not None and pad_to != full.shape[partition_dim]:
        pad_shape = list(full.shape)
        pad_shape[partition_dim] = pad_to - full.shape[partition_dim]
        full = torch.cat([full, full.new_zeros(pad_shape)], dim=partition_dim)
    return sharding.shard(full, partition_dim)
