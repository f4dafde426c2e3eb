"""Shards move between megacompress and Megatron-LM (megatron-core) in both directions, byte for byte,
and Megatron's own shards (no meta.json) train."""

import filecmp
import re
import warnings

import numpy as np
import pytest
import torch

from megacompress.data.builder import DataConfig, DataConfigError, build_datasets
from megacompress.data.indexed import IndexedDataset, IndexedDatasetWriter
from megacompress.data.tokenizers import BytesTokenizer

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


def _megatron_shard(prefix, documents, dtype=np.uint16):
    """Shard written by megatron-core's builder, one sequence per document, and no meta.json."""
    builder = megatron_indexed.IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for tokens in documents:
        builder.add_item(torch.tensor(tokens))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    return prefix


def _train_samples(prefix, tmp_path, num_samples=3):
    config = DataConfig(data_path=[prefix], kind="gpt", split="1,0,0", shuffle=False, cache_dir=str(tmp_path / "c"))
    with pytest.warns(UserWarning) as caught:
        train = build_datasets(config, BytesTokenizer(), seq_length=4, num_samples=[num_samples, 0, 0])[0]
    return [{k: v.tolist() for k, v in train[i].items()} for i in range(len(train))], [str(w.message) for w in caught]


@pytest.mark.parametrize("append_eod", [False, True])
def test_megatron_shard_without_meta_trains(tmp_path, append_eod):
    eod = BytesTokenizer().eod
    documents = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    if append_eod:  # Megatron's preprocess_data.py --append-eod; without it documents have no EOD
        documents = [doc + [eod] for doc in documents]
    samples, messages = _train_samples(_megatron_shard(str(tmp_path / "m"), documents), tmp_path)
    # The same samples either way: the missing EOD is inserted, an existing one is not doubled.
    assert samples == [
        {"input_ids": [1, 2, 3, eod], "labels": [2, 3, eod, -100], "position_ids": [0, 1, 2, 3],
         "document_ids": [0, 0, 0, 0]},
        {"input_ids": [4, 5, eod, 6], "labels": [5, eod, -100, 7], "position_ids": [0, 1, 2, 0],
         "document_ids": [0, 0, 0, 1]},
        {"input_ids": [7, 8, 9, eod], "labels": [8, 9, eod, -100], "position_ids": [0, 1, 2, 3],
         "document_ids": [0, 0, 0, 0]},
    ]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "fingerprint cannot be compared" in messages[0]
    assert f"{3 if append_eod else 0} of 3 documents end with EOD {eod} -> append_eod={append_eod}" in messages[0]


def test_megatron_shard_with_out_of_range_ids_is_refused(tmp_path):
    prefix = _megatron_shard(str(tmp_path / "m"), [[1, 2, 3], [4, 300, 5]])  # bytes vocab_size is 259
    config = DataConfig(data_path=[prefix], kind="gpt", split="1,0,0", cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataConfigError, match=re.escape(f"{prefix}.bin: token ids span [1, 300] but tokenizer "
                                                        "bytes has vocab_size 259")):
        build_datasets(config, BytesTokenizer(), seq_length=4, num_samples=[2, 0, 0])
