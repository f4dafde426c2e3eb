"""Shards move between megacompress and Megatron-LM (megatron-core) in both directions, byte for byte."""

import filecmp
import warnings

import numpy as np
import pytest
import torch

from megacompress.data.indexed import IndexedDataset, IndexedDatasetWriter

with warnings.catch_warnings():  # megatron-core warns that Transformer Engine / Apex are absent
    warnings.simplefilter("ignore")
    megatron_indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset")

# Document 0 holds two sequences (as Megatron's --split-sentences writes), the others one each.
DOCUMENTS = [([5, 6, 7, 8, 9], [3, 2]), ([1, 2], None), ([4], None)]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, np.uint8])
def test_shards_are_byte_identical_to_megatron(tmp_path, dtype):
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "theirs")
    with IndexedDatasetWriter(ours, dtype) as writer:
        for tokens, lengths in DOCUMENTS:
            writer.add_document(np.array(tokens, dtype=dtype), lengths)
    builder = megatron_indexed.IndexedDatasetBuilder(theirs + ".bin", dtype=dtype)
    for tokens, lengths in DOCUMENTS:
        start = 0
        for n in lengths or [len(tokens)]:
            builder.add_item(torch.tensor(tokens[start:start + n]))
            start += n
        builder.end_document()
    builder.finalize(theirs + ".idx")

    for ext in (".bin", ".idx"):
        assert filecmp.cmp(ours + ext, theirs + ext, shallow=False), ext

    sequences = [[5, 6, 7], [8, 9], [1, 2], [4]]
    read_by_megatron = megatron_indexed.IndexedDataset(ours)
    assert [read_by_megatron[i].tolist() for i in range(len(read_by_megatron))] == sequences
    assert read_by_megatron.document_indices.tolist() == [0, 2, 3, 4]
    read_by_us = IndexedDataset(theirs)
    assert [read_by_us[i].tolist() for i in range(len(read_by_us))] == sequences
    assert read_by_us.document_indices.tolist() == [0, 2, 3, 4]
    assert read_by_us.dtype == np.dtype(dtype)
