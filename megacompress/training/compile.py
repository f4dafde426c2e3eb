"""``parallel.compile``: every transformer block through ``torch.compile``.

Each `TransformerBlock`'s ``forward`` is replaced by its compiled version (the module stays:
parameter names, hence checkpoints, do not change), with the custom masks as graph inputs: the prepared mask is a
tensor (dense SDPA) or a block mask (FlexAttention), so one compiled graph serves every
layer and every batch of a shape, and a block has no graph break (tests/test_compile.py
counts them). Inductor on CPU here, the same code on GPU. Blocks rather than the whole model:
the embedding, loss and the methods' own glue between stacks stay eager, and compile time
is one block's, not the depth's. Applied before `megacompress.training.recompute`: full
recompute checkpoints the compiled forward (and reruns it compiled); dynamo does not trace
into a forward that is already a checkpoint call.
"""

from __future__ import annotations

import torch
from torch import nn

from megacompress.models.blocks import TransformerBlock


def apply_compile(model: nn.Module, enabled: bool, backend: str = "inductor") -> None:
    """Compile every block of ``model`` when ``enabled`` (``backend``: a ``torch.compile`` backend)."""
    if not enabled:
        return
    for module in model.modules():
        if isinstance(module, TransformerBlock):
            module.forward = torch.compile(module.forward, backend=backend)
