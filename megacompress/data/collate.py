"""Stack per-sample dicts of numpy arrays into a batch of torch tensors.

Every sample must have the same keys; array keys must have the same shape, so
``[S]`` arrays become ``[B, S]`` tensors and scalars (e.g. a per-row span start)
become ``[B]`` tensors. dtypes are kept (int64 ids, bool masks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

# Keys every token dataset yields (docs/architecture.md, "Samples and batches").
TOKEN_BATCH_KEYS = frozenset({"input_ids", "labels", "position_ids", "document_ids"})


def collate(samples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """``[{key: array [S]}] * B -> {key: tensor [B, S]}``; raises on mismatched keys or shapes."""
    if not samples:
        raise ValueError("collate: empty batch")
    keys = set(samples[0])
    batch = {}
    for i, sample in enumerate(samples):
        if set(sample) != keys:
            raise ValueError(f"collate: sample {i} has keys {sorted(sample)}, sample 0 has {sorted(keys)}")
    for key in samples[0]:
        arrays = [np.asarray(sample[key]) for sample in samples]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"collate: key {key!r} has different shapes in one batch: {sorted(shapes)}")
        batch[key] = torch.from_numpy(np.stack(arrays))
    return batch
