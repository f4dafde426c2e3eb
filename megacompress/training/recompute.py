"""Activation recompute (``parallel.recompute``): activation memory traded for compute.

* ``none``: every activation is kept for backward.
* ``full``: each transformer block keeps only its input and reruns its forward in backward,
  so one block's activations are alive at a time.
* ``selective``: only the attention core (q, k, v, mask -> softmax(qk^T)v, whose activations
  grow with the square of the sequence on the dense path) is rerun, as Megatron's selective
  recompute; projections, norms and the MLP keep theirs.

The engine applies it to the built model (models know nothing of it): every
`TransformerBlock` / `Attention` module in the model, so a model with several stacks and any
mask kind are covered, and parameter names (checkpoints) do not change. It uses
``torch.utils.checkpoint`` non-reentrant with the RNG state restored for the rerun: a
dropout path would draw the same mask, and a block's tensor-parallel collectives rerun in
backward in the same order on every rank. Losses and gradients equal ``none``
(``tests/test_recompute.py``: TP=2 with ZeRO-1 on real processes).
"""

from __future__ import annotations

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint

from megacompress.models.blocks import Attention, TransformerBlock
from megacompress.training.config import RECOMPUTE_MODES


def _recomputed(fn):
    return functools.partial(checkpoint, fn, use_reentrant=False, preserve_rng_state=True)


def apply_recompute(model: nn.Module, mode: str) -> None:
    """Wrap ``model``'s blocks (``full``) or attention cores (``selective``)."""
    if mode not in RECOMPUTE_MODES:
        raise ValueError(f"parallel.recompute must be one of {', '.join(RECOMPUTE_MODES)}, got {mode!r}")
    for module in model.modules():
        if mode == "full" and isinstance(module, TransformerBlock):
            module.forward = _recomputed(module.forward)
        elif mode == "selective" and isinstance(module, Attention):
            module.core = _recomputed(module.core)
