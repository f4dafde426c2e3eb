"""What every language model returns, and the per-token loss the engine normalises.

Logits stay *vocab-sharded* over TP ([B, S, Vp/tp], this rank's block of the padded
vocabulary); `gather_logits` gives the full, unpadded [B, S, V]. The loss is returned
as a *sum* of per-token cross-entropies over ``labels != -100`` plus the number of those
labels, not as a mean: the training engine divides the sum by the labelled tokens of the
whole global batch (all accumulation steps and DP ranks, Megatron's rule), so that the
gradient does not depend on how a global batch is cut into micro batches when samples
carry different numbers of labels (padding, loss masks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megacompress.parallel import mappings
from megacompress.parallel.cross_entropy import vocab_parallel_cross_entropy

IGNORE_INDEX = -100


@dataclass
class ModelOutput:
    logits: torch.Tensor                    # [B, S, Vp/tp] this rank's vocabulary block
    loss_sum: torch.Tensor | None = None    # scalar fp32: sum of token losses, when labels were given
    num_labels: torch.Tensor | None = None  # scalar int64: labels != -100 in this batch

    @property
    def loss(self) -> torch.Tensor | None:
        """Mean token loss of this batch (0 when it has no label); None without labels."""
        if self.loss_sum is None:
            return None
        return self.loss_sum / self.num_labels.clamp(min=1)


def language_model_loss(logits_parallel: torch.Tensor, labels: torch.Tensor,
                        vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropies over ``labels != -100``, number of such labels)."""
    per_token = vocab_parallel_cross_entropy(logits_parallel, labels, ignore_index=IGNORE_INDEX,
                                             vocab_size=vocab_size)
    return per_token.sum(), (labels != IGNORE_INDEX).sum()


def select_positions(hidden: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """[B, S, H] -> [B, 1, H] at slot ``index[b]`` of each row, or [B, N, H] at slots ``index[b, :]``
    (several prompts packed in one row); unchanged when ``index`` is None."""
    if index is None:
        return hidden
    index = index.to(hidden.device)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if index.dim() == 2:
        return hidden[rows[:, None], index]
    return hidden[rows, index][:, None]


def gather_logits(logits_parallel: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[..., Vp/tp] shards -> full [..., vocab_size] on every TP rank (padding columns dropped)."""
    return mappings.gather_from_tp_region(logits_parallel)[..., :vocab_size]
