"""The sentence sidecar is checked against the tokens once, when the document index is built."""

import numpy as np
import pytest

from megacompress.data import document_dataset
from megacompress.data.document_dataset import DocumentDataset, DocumentDatasetConfig, check_eos_sidecar
from megacompress.data.indexed import IndexedDataset, IndexedDatasetWriter, ShardError

EOS = 9
# Document 2 is empty (an empty field of a multi-key corpus); 0 = EOD.
DOCS = [[1, 2, 9, 3, 9, 0], [4, 5, 6, 7, 9, 8, 9, 0], [], [5, 9], [7]]
OFFSETS = [[2, 4], [4, 6], [], [1], []]


def _write(prefix, sequences, dtype):
    with IndexedDatasetWriter(str(prefix), dtype) as writer:
        for sequence in sequences:
            writer.add_document(np.asarray(sequence, dtype=dtype))
    return str(prefix)


def _shard(tmp_path, offsets):
    prefix = _write(tmp_path / "s", DOCS, np.uint16)
    _write(tmp_path / "s.eos", offsets, np.int32)
    return prefix


def _dataset(prefix):
    return DocumentDataset(prefix, DocumentDatasetConfig(seq_length=4, pad_id=0, eos_id=EOS))


def _with(document, offsets):
    return [offsets if d == document else o for d, o in enumerate(OFFSETS)]


def test_correct_sidecar_with_empty_document_is_accepted(tmp_path):
    ds = _dataset(_shard(tmp_path, OFFSETS))
    assert ds.use_sentences and len(ds) == len(ds.chunks)


@pytest.mark.parametrize("document, offsets, message", [
    (1, [1, 4, 6], "offset 1 holds token 5, not the EOS id 9"),  # made-up EOS position
    (0, [2, 4, 10], "EOS offset 10 is outside the document (6 tokens)"),  # past the end (was dropped silently)
    (3, [-1, 1], "EOS offset -1 is outside the document (2 tokens)"),
    (1, [6, 4], "offsets are not strictly increasing (6 then 4)"),
    (1, [4, 4, 6], "offsets are not strictly increasing (4 then 4)"),
    (1, [4], "holds 2 EOS tokens but the sidecar lists 1 offsets"),  # an EOS the sidecar misses
    (4, [], None),  # no EOS, no offsets: fine
])
def test_bad_sidecar_names_file_and_document(tmp_path, document, offsets, message):
    prefix = _shard(tmp_path, _with(document, offsets))
    if message is None:
        _dataset(prefix)
        return
    with pytest.raises(ShardError) as info:
        _dataset(prefix)
    assert str(info.value) == f"{prefix}.eos.idx: document {document}: {message}"


def test_check_is_blockwise_and_names_the_global_document(tmp_path):
    prefix = _shard(tmp_path, _with(3, [0]))
    shard, eos = IndexedDataset(prefix), IndexedDataset(prefix + ".eos")
    check_eos_sidecar(shard, eos, EOS, (0, 3), block_tokens=3)  # the bad document is outside the range
    for block_tokens in (1, 3, 7, 1 << 20):
        with pytest.raises(ShardError, match=r"s\.eos\.idx: document 3: offset 0 holds token 5"):
            check_eos_sidecar(shard, eos, EOS, (0, 5), block_tokens=block_tokens)


def test_check_runs_at_index_build_not_per_item(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(document_dataset, "check_eos_sidecar", lambda *args: calls.append(args[3]))
    prefix = _shard(tmp_path, OFFSETS)
    config = DocumentDatasetConfig(seq_length=4, pad_id=0, eos_id=EOS)
    ds = DocumentDataset(prefix, config, tmp_path / "cache")
    assert calls == [(0, 5)]
    assert all("eos_mask" in ds[i] for i in range(len(ds)))
    DocumentDataset(prefix, config, tmp_path / "cache")  # index from the cache: same files, already checked
    assert calls == [(0, 5)]
    with pytest.raises(ValueError, match="eos_id is needed"):
        DocumentDataset(prefix, DocumentDatasetConfig(seq_length=4, pad_id=0))
