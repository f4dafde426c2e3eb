"""Shards: Megatron byte layout, every dtype, merge, atomicity, corruption errors."""

import os
import struct

import numpy as np
import pytest

from megacompress.data.indexed import (
    DTYPE_CODES,
    IndexedDataset,
    IndexedDatasetWriter,
    ShardError,
    best_dtype,
)


def _write(prefix, dtype, docs):
    with IndexedDatasetWriter(str(prefix), dtype) as w:
        for tokens, lengths in docs:
            w.add_document(np.asarray(tokens, dtype=dtype), lengths)
    return str(prefix)


@pytest.mark.parametrize("code", sorted(DTYPE_CODES))
def test_round_trip_every_dtype(tmp_path, code):
    dtype = DTYPE_CODES[code]
    rng = np.random.default_rng(code)
    docs = []
    for _ in range(7):
        n = int(rng.integers(0, 20))
        tokens = rng.integers(0, 100, size=n).astype(dtype)
        cut = int(rng.integers(0, n + 1))
        docs.append((tokens, [cut, n - cut]))
    prefix = _write(tmp_path / "s", dtype, docs)
    ds = IndexedDataset(prefix)
    assert ds.dtype == dtype
    assert len(ds) == 14 and ds.num_documents == 7
    for d, (tokens, lengths) in enumerate(docs):
        got = ds.document(d)
        assert [len(g) for g in got] == lengths
        np.testing.assert_array_equal(np.concatenate(got), tokens)
    assert ds.num_tokens == sum(len(t) for t, _ in docs)


def test_index_bytes_match_megatron_layout(tmp_path):
    prefix = _write(tmp_path / "s", np.uint16, [([1, 2, 3], None), ([4, 5, 6, 7], [1, 3])])
    expected = (
        b"MMIDIDX\x00\x00"
        + struct.pack("<Q", 1)
        + struct.pack("<B", 8)  # uint16
        + struct.pack("<Q", 3)  # sequences
        + struct.pack("<Q", 3)  # document indices, including the leading 0
        + struct.pack("<3i", 3, 1, 3)
        + struct.pack("<3q", 0, 6, 8)
        + struct.pack("<3q", 0, 1, 3)
    )
    assert open(prefix + ".idx", "rb").read() == expected
    assert open(prefix + ".bin", "rb").read() == struct.pack("<7H", 1, 2, 3, 4, 5, 6, 7)


def test_slices_and_get(tmp_path):
    prefix = _write(tmp_path / "s", np.int32, [([10, 11, 12, 13], None), ([20], None)])
    ds = IndexedDataset(prefix)
    np.testing.assert_array_equal(ds.get(0, offset=1, length=2), [11, 12])
    np.testing.assert_array_equal(ds.get(0, offset=3), [13])
    np.testing.assert_array_equal(ds[-1], [20])
    assert [a.tolist() for a in ds[0:2]] == [[10, 11, 12, 13], [20]]
    with pytest.raises(IndexError):
        ds.get(0, offset=2, length=5)
    with pytest.raises(IndexError):
        ds[2]


def test_zero_length_documents_and_whole_shard_views(tmp_path):
    docs = [([], None), ([1, 2], None), ([], None), ([3, 4, 5], [1, 2]), ([], None)]
    prefix = _write(tmp_path / "s", np.uint16, docs)
    ds = IndexedDataset(prefix)
    assert ds.sequence_lengths.tolist() == [0, 2, 0, 1, 2, 0] and ds.num_documents == 5
    assert ds[0].tolist() == [] and ds[5].tolist() == [] and ds.document(3)[1].tolist() == [4, 5]
    assert ds.tokens().tolist() == [1, 2, 3, 4, 5] and ds.tokens(2, 4).tolist() == [3]
    assert ds.tokens(5, 6).tolist() == [] and ds.tokens(6, 6).tolist() == []
    assert ds.document_last_tokens().tolist() == [2, 5]  # empty documents left out
    assert ds.token_bounds() == (1, 5) and ds.token_bounds(block_tokens=2) == (1, 5)
    empty = IndexedDataset(_write(tmp_path / "e", np.uint16, [([], None)] * 3))
    assert len(empty) == 3 and empty[2].tolist() == [] and empty.token_bounds() is None
    assert empty.document_last_tokens().tolist() == []


def test_merge(tmp_path):
    a = _write(tmp_path / "a", np.uint16, [([1, 2], None), ([3], None)])
    b = _write(tmp_path / "b", np.uint16, [([4, 5, 6], [2, 1])])
    whole = _write(tmp_path / "whole", np.uint16, [([1, 2], None), ([3], None), ([4, 5, 6], [2, 1])])
    with IndexedDatasetWriter(str(tmp_path / "m"), np.uint16) as w:
        w.merge(a)
        w.merge(b)
    for ext in (".bin", ".idx"):
        assert open(str(tmp_path / "m") + ext, "rb").read() == open(whole + ext, "rb").read()
    with IndexedDatasetWriter(str(tmp_path / "x"), np.int32) as w, pytest.raises(ShardError, match="a.idx"):
        w.merge(a)


def test_atomic_abort_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with IndexedDatasetWriter(str(tmp_path / "s"), np.uint16) as w:
            w.add_document([1, 2, 3])
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_out_of_range_ids_rejected(tmp_path):
    w = IndexedDatasetWriter(str(tmp_path / "s"), np.uint16)
    with pytest.raises(ValueError, match="do not fit"):
        w.add_document(np.array([70000], dtype=np.int64))
    w.abort()


def test_best_dtype():
    assert best_dtype(256) == np.uint16 and best_dtype(50259) == np.uint16
    assert best_dtype(65500) == np.int32 and best_dtype(200_000) == np.int32


def _corrupt(prefix, ext, fn):
    path = prefix + ext
    data = bytearray(open(path, "rb").read())
    open(path, "wb").write(bytes(fn(data)))
    return path


def _set_byte(pos, value):
    def fn(data):
        data[pos] = value
        return data

    return fn


@pytest.mark.parametrize(
    "ext, fn, message",
    [
        (".idx", _set_byte(0, ord("X")), "bad magic"),
        (".idx", _set_byte(9, 2), "version 2"),
        (".idx", _set_byte(17, 99), "dtype code 99"),
        (".idx", lambda d: d[:-3], "truncated"),
        (".idx", lambda d: d[:20], "truncated"),
        (".bin", lambda d: d[:-2], "truncated"),
        (".idx", _set_byte(34 + 4 * 2, 7), "pointers"),
    ],
)
def test_corrupt_shards_raise_naming_the_file(tmp_path, ext, fn, message):
    prefix = _write(tmp_path / "s", np.uint16, [([1, 2, 3], None), ([4, 5], None)])
    path = _corrupt(prefix, ext, fn)
    with pytest.raises(ShardError, match=message) as info:
        IndexedDataset(prefix)
    assert path in str(info.value)


def test_missing_shard(tmp_path):
    with pytest.raises(ShardError, match="does not exist"):
        IndexedDataset(str(tmp_path / "nothing"))
