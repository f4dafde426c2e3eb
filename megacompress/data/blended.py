"""Weighted blend of several datasets (Megatron-style greedy assignment).

Sample ``i`` of the blend goes to the dataset furthest below its target share
after ``i`` samples: ``argmax_d(w_d * (i + 1) - count_d)`` (ties to the lowest
d), and takes that dataset's next unused sample. So after any prefix of n
samples, dataset d has contributed ``w_d * n`` samples to within one, and every
dataset is read in its own (already shuffled) order, each sample at most once.

Cached indices (see ``index_cache``):

* ``dataset_index``        int16 ``[size]``: which dataset sample i comes from;
* ``dataset_sample_index`` int64 ``[size]``: the index inside that dataset.

The assignment does not depend on the datasets themselves, only on the
normalised weights and ``size``; ``blend_counts`` tells a builder how many
samples each dataset must provide (see ``builder.build_datasets``). It is
sequential, so the first n entries are the same for any ``size >= n``: with
prefix-stable components (GPT and document datasets are), growing ``size``
keeps every item seen so far.

``batch_keys`` is the key set of the datasets the blend samples from; they must
all yield the same keys (collate stacks them into one batch).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numba
import numpy as np

from megacompress.data.index_cache import load_or_build


@numba.njit(cache=False)
def _greedy_assign(weights: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    dataset_index = np.empty(size, dtype=np.int16)
    dataset_sample_index = np.empty(size, dtype=np.int64)
    counts = np.zeros(len(weights), dtype=np.int64)
    for i in range(size):
        best, best_error = 0, -np.inf
        for d in range(len(weights)):
            error = weights[d] * (i + 1) - counts[d]
            if error > best_error:
                best, best_error = d, error
        dataset_index[i] = best
        dataset_sample_index[i] = counts[best]
        counts[best] += 1
    return dataset_index, dataset_sample_index


def normalize_weights(weights: Sequence[float]) -> np.ndarray:
    """Weights as float64 summing to 1; rejects empty, negative, or all-zero weights."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"blend weights must be a non-empty list of non-negative numbers with a positive sum, "
                         f"got {list(weights)}")
    if len(w) > np.iinfo(np.int16).max:
        raise ValueError(f"at most {np.iinfo(np.int16).max} datasets can be blended, got {len(w)}")
    return w / w.sum()


def blend_indices(weights: Sequence[float], size: int, cache_dir: str | os.PathLike | None = None
                  ) -> dict[str, np.ndarray]:
    """``dataset_index`` / ``dataset_sample_index`` for ``size`` samples (cached)."""
    w = normalize_weights(weights)
    key = {"weights": w.tolist(), "size": int(size)}
    cached = load_or_build("BlendedDataset", key, lambda: dict(zip(
        ("dataset_index", "dataset_sample_index"), _greedy_assign(w, int(size)))), cache_dir)
    return cached.arrays


def blend_counts(weights: Sequence[float], size: int, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Number of samples the blend takes from each dataset (int64 ``[len(weights)]``)."""
    index = blend_indices(weights, size, cache_dir)["dataset_index"]
    return np.bincount(index, minlength=len(weights)).astype(np.int64)


def _common_batch_keys(datasets: Sequence) -> frozenset[str]:
    """The ``batch_keys`` all ``datasets`` share; ValueError naming the first that differs."""
    keys = frozenset(datasets[0].batch_keys) if datasets else frozenset()
    for d, dataset in enumerate(datasets):
        if frozenset(dataset.batch_keys) != keys:
            name = getattr(dataset, "prefix", f"dataset {d}")
            raise ValueError(f"{name}: yields batch keys {sorted(dataset.batch_keys)} but the other blended "
                             f"datasets yield {sorted(keys)}; blend datasets of one kind (and all with or all "
                             "without the sentence sidecar)")
    return keys


class BlendedDataset:
    """``size`` samples drawn from ``datasets`` in proportion to ``weights``.

    Each dataset must hold at least as many samples as the blend takes from it
    (``blend_counts``) and the datasets it samples from must have the same
    ``batch_keys``; otherwise construction fails naming the dataset.
    """

    def __init__(self, datasets: Sequence, weights: Sequence[float], size: int,
                 cache_dir: str | os.PathLike | None = None):
        if len(datasets) != len(weights):
            raise ValueError(f"{len(datasets)} datasets but {len(weights)} weights")
        self.datasets = list(datasets)
        self.weights = normalize_weights(weights)
        # Raw weights, as builders pass to blend_counts: normalising twice can move a
        # weight by one ulp, flip a tie in the greedy assignment and change the counts.
        indices = blend_indices(weights, size, cache_dir)
        self.dataset_index = indices["dataset_index"]
        self.dataset_sample_index = indices["dataset_sample_index"]
        counts = np.bincount(self.dataset_index, minlength=len(datasets))
        for d, (dataset, need) in enumerate(zip(self.datasets, counts)):
            if need > len(dataset):
                name = getattr(dataset, "prefix", f"dataset {d}")
                raise ValueError(f"{name}: blend needs {need} samples from it but it has {len(dataset)}; "
                                 "build it with num_samples >= blend_counts(...)")
        self.batch_keys = _common_batch_keys([d for d, need in zip(self.datasets, counts) if need])

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"blend index {index} out of range for {len(self)} samples")
        d = int(self.dataset_index[index])
        return self.datasets[d][int(self.dataset_sample_index[index])]
