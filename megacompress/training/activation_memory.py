"""Bytes of activations autograd keeps for backward, measured exactly.

``saved_activation_bytes(fn, params)`` runs ``fn()`` under ``torch.autograd.graph.saved_tensors_hooks``
and adds up the storages of every tensor saved for backward, each storage once (views of
one tensor share it) and parameters excluded (they exist anyway). Unlike a process's peak
memory it does not depend on the allocator or on transient buffers, so it is comparable
across parallel layouts on one machine (sequence parallelism, recompute) and with an
analytic model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


def saved_activation_bytes(fn: Callable[[], Any], params: Iterable[torch.Tensor]) -> tuple[Any, int]:
    """``(fn(), bytes saved for backward during it)``."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip and storage.device.type != "meta":
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, sum(seen.values())
