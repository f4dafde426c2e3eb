"""Capture and restore every RNG a training step may draw from (per rank).

The baseline model has no dropout, but data-independent randomness (future dropout,
sampling in evaluation hooks) must also resume exactly, so the state of Python's
``random``, NumPy's legacy global generator and torch (CPU and, if present, CUDA)
is saved with each checkpoint, one file per global rank.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch identically on every rank (the model's init uses
    its own seeded generators, so this only affects runtime randomness)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """Only tuples, ints, floats, strings and tensors, so the file loads with
    ``torch.load(weights_only=True)`` (no arbitrary unpickling of a checkpoint)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                    int(has_gauss), float(cached)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a `get_rng_state` dict; an empty dict (no per-rank state saved) is a no-op."""
    if not state:
        return
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
