"""Growing num_samples (resuming with more steps) keeps every item seen so far, for every dataset."""

import numpy as np
import pytest
from test_datasets import random_docs, write_shard

from megacompress.data.blended import blend_indices
from megacompress.data.builder import DataConfig, build_datasets
from megacompress.data.document_dataset import DocumentDataset, DocumentDatasetConfig
from megacompress.data.gpt_dataset import GPTDataset, GPTDatasetConfig
from megacompress.data.tokenizers import BytesTokenizer

EOS = 9


def _docs(seed, n, low=1, high=30):
    return random_docs(np.random.default_rng(seed), n, low, high)


def _assert_prefix(small, large):
    assert len(small) < len(large)
    for k in range(len(small)):
        a, b = small[k], large[k]
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"item {k}, {key}")


@pytest.mark.parametrize("add_eod", [True, False])
def test_gpt_prefix_stable_across_epochs(tmp_path, add_eod):
    prefix = write_shard(tmp_path / "s", _docs(0, 12))  # ~180 tokens: 8-token samples, ~22 per epoch
    make = lambda n: GPTDataset(prefix, GPTDatasetConfig(seq_length=8, eod_id=0, num_samples=n, seed=3,  # noqa: E731
                                                         add_eod=add_eod))
    largest = make(400)  # many epochs
    for n in (1, 5, 21, 22, 23, 60, 399):  # inside the first epoch, at its end, spanning epochs
        _assert_prefix(make(n), largest)
    # Each whole epoch's items are a shuffle of exactly that epoch's samples.
    tokens_per_epoch = int(largest.shard.sequence_lengths.sum()) + 12 * add_eod
    epoch_of = np.asarray(largest.shuffle_idx) * 8 // tokens_per_epoch
    assert np.all(np.diff(epoch_of) >= 0) and epoch_of[-1] > 3
    first = np.asarray(largest.shuffle_idx)[epoch_of == 0]
    assert sorted(first.tolist()) == list(range(len(first))) and first.tolist() != sorted(first.tolist())


def test_document_prefix_stable(tmp_path):
    prefix = write_shard(tmp_path / "s", _docs(1, 15, low=2), eos_token=EOS)
    make = lambda n: DocumentDataset(prefix, DocumentDatasetConfig(seq_length=8, pad_id=0, num_samples=n,  # noqa: E731
                                                                   seed=4, eos_id=EOS))
    largest = make(300)
    for n in (1, 10, 31, 150):
        _assert_prefix(make(n), largest)


def test_blend_prefix_stable(tmp_path):
    weights = [0.2, 0.5, 0.3]
    large = blend_indices(weights, 1000)
    small = blend_indices(weights, 333)
    for key in ("dataset_index", "dataset_sample_index"):
        np.testing.assert_array_equal(small[key], large[key][:333])

    tokenizer = BytesTokenizer()
    a = write_shard(tmp_path / "a", _docs(2, 10, low=2))
    b = write_shard(tmp_path / "b", _docs(3, 25, low=2))
    for kind in ("gpt", "document"):
        config = DataConfig(data_path=[0.3, a, 0.7, b], kind=kind, split="1,0,0", cache_dir=str(tmp_path / "c"))
        with pytest.warns(UserWarning, match="meta.json"):
            build = lambda n: build_datasets(config, tokenizer, seq_length=8, num_samples=[n, 0, 0])[0]  # noqa: E731
            largest = build(500)
            for n in (7, 120):
                _assert_prefix(build(n), largest)
