"""Per-epoch permutations that do not change when more epochs are asked for.

Every dataset order is a concatenation of epochs. Epoch ``e`` of stream ``s`` is
shuffled by its own generator, ``PCG64(SeedSequence([seed, s, e]))``, so it
depends only on (seed, stream, epoch, epoch size): building more epochs (a run
resumed with more training steps) appends to the order and never reorders what
came before. Streams keep independent shuffles of one dataset apart (e.g. the
document order and the sample order of ``GPTDataset``). Only numpy's
``Generator`` is used, never the global RNG, so orders are the same on every
machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Stream ids; a new dataset order takes a new id so it is not correlated with the others.
DOCUMENTS = 0
SAMPLES = 1
CHUNKS = 2


def epoch_permutations(seed: int, stream: int, epoch_sizes: Sequence[int], shuffle: bool = True) -> np.ndarray:
    """Concatenation over epochs e of a permutation of ``range(epoch_sizes[e])`` (int64).

    The values are positions inside each epoch; ``shuffle=False`` gives ``arange`` per epoch.
    """
    parts = [
        np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, e]))).permutation(n)
        if shuffle else np.arange(n)
        for e, n in enumerate(epoch_sizes)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
