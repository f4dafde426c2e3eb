"""``parallel.sequence_parallel``: turn on sequence parallelism in every stack of a built model.

The engine applies it (models know nothing of the engine); every `TransformerStack` of the
model, so a model with several stacks and any mask kind are covered. What it does and the
collectives it uses: `megacompress.parallel.sequence`. With TP size 1 it changes nothing.
"""

from __future__ import annotations

from torch import nn

from megacompress.models.blocks import TransformerStack


def apply_sequence_parallel(model: nn.Module, enabled: bool) -> None:
    """Set every stack's ``sequence_parallel`` to ``enabled``."""
    for module in model.modules():
        if isinstance(module, TransformerStack):
            module.sequence_parallel = enabled
