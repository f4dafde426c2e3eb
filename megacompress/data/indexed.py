"""Megatron-LM compatible ``.bin`` / ``.idx`` shards: streaming writer, mmap reader, merge.

A shard ``PREFIX`` is two files, byte-identical to Megatron-LM's ``IndexedDataset``
(``megatron/core/datasets/indexed_dataset.py``), so shards move between the two
projects in both directions.

``PREFIX.bin``
    The token arrays of all sequences, concatenated, in the shard's dtype
    (native little-endian), nothing else.

``PREFIX.idx`` (all integers little-endian)::

    offset  size    field
    0       9       magic b"MMIDIDX\\x00\\x00"
    9       8       <Q version, always 1
    17      1       <B dtype code (see DTYPE_CODES)
    18      8       <Q S = sequence count
    26      8       <Q D = document count = len(document_indices), INCLUDING the leading 0
    34      4*S     int32 sequence lengths (in tokens)
    34+4S   8*S     int64 sequence pointers (byte offset of each sequence in .bin)
    34+12S  8*D     int64 document indices: sequence index where each document
                    starts, a leading 0, and S as the last entry

Invariants checked by the reader: pointers are the exclusive prefix sum of
``lengths * itemsize``; document indices start at 0, never decrease and end at S;
the ``.idx`` size matches the counts exactly; the ``.bin`` size is
``sum(lengths) * itemsize``. Any violation raises :class:`ShardError` naming the file.
"""

from __future__ import annotations

import os
import shutil
import struct
from array import array

import numpy as np

from megacompress.errors import UserError

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
_HEADER_SIZE = len(INDEX_MAGIC) + 8 + 1 + 8 + 8  # 34 bytes

# Megatron's DType enum values.
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float64),
    7: np.dtype(np.float32),
    8: np.dtype(np.uint16),
}
_CODE_OF = {dtype: code for code, dtype in DTYPE_CODES.items()}

_COPY_CHUNK = 16 << 20  # bytes per read when merging .bin files


class ShardError(UserError, ValueError):
    """A shard is missing, truncated, corrupt or incompatible; the message names the file."""


def bin_path(prefix: str) -> str:
    return prefix + ".bin"


def idx_path(prefix: str) -> str:
    return prefix + ".idx"


def shard_exists(prefix: str) -> bool:
    return os.path.isfile(bin_path(prefix)) and os.path.isfile(idx_path(prefix))


def require_shard(prefix: str) -> None:
    """`ShardError` "shard not found: PREFIX" (with the missing files and how to make it)."""
    missing = [p for p in (bin_path(prefix), idx_path(prefix)) if not os.path.isfile(p)]
    if not missing:
        return
    stem, _, key = str(prefix).rpartition("_")[0].rpartition("_")
    hint = (f"python tools/preprocess_data.py --input FILES --output-prefix {stem} --json-keys {key}"
            if str(prefix).endswith("_document") and stem else
            "python tools/preprocess_data.py --input FILES --output-prefix OUT (it writes OUT_text_document)")
    raise ShardError(f"shard not found: {prefix} (no {', '.join(missing)}); make it with {hint}")


def best_dtype(vocab_size: int) -> np.dtype:
    """Smallest dtype for token ids below ``vocab_size`` (Megatron's rule: uint16 below 65500)."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def dtype_code(dtype) -> int:
    dtype = np.dtype(dtype)
    if dtype not in _CODE_OF:
        raise ValueError(f"dtype {dtype} has no Megatron code; use one of {sorted(map(str, _CODE_OF))}")
    return _CODE_OF[dtype]


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def cast_tokens(arr: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """``arr`` as ``dtype``; raises (naming ``where``) instead of wrapping ids that do not fit.

    A silent wrap-around (e.g. id 70000 into uint16) would corrupt the shard.
    """
    if arr.dtype == dtype:
        return arr
    if arr.size and dtype.kind in "iu" and arr.dtype.kind in "iub":
        info = np.iinfo(dtype)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            raise ValueError(f"{where}: token ids in [{lo}, {hi}] do not fit dtype {dtype}")
    return arr.astype(dtype)


class IndexedDatasetWriter:
    """Streaming, atomic writer of one shard.

    Tokens go straight to ``PREFIX.bin.tmp-<pid>``; only the int32 sequence lengths
    and int64 document indices stay in memory (12 bytes per sequence), so memory
    does not grow with the number of tokens. ``finalize()`` writes the index and
    renames both temp files into place (``.bin`` first, then ``.idx``, so a reader
    never sees a new index next to an old data file). Used as a context manager it
    finalizes on success and removes the temp files on an exception.
    """

    def __init__(self, prefix: str, dtype) -> None:
        self.prefix = prefix
        self.dtype = np.dtype(dtype)
        dtype_code(self.dtype)  # reject unsupported dtypes early
        suffix = f".tmp-{os.getpid()}"
        self._bin_tmp = bin_path(prefix) + suffix
        self._idx_tmp = idx_path(prefix) + suffix
        parent = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(parent, exist_ok=True)
        self._bin = open(self._bin_tmp, "wb")
        self._lengths = array("i")
        self._document_indices = array("q", [0])
        self._closed = False

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()

    @property
    def num_sequences(self) -> int:
        return len(self._lengths)

    @property
    def num_documents(self) -> int:
        return len(self._document_indices) - 1

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"writer for {self.prefix} is already finalized or aborted")

    def _as_dtype(self, tokens) -> np.ndarray:
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"{self.prefix}: tokens must be 1-D, got shape {arr.shape}")
        return cast_tokens(arr, self.dtype, self.prefix)

    def add_document(self, tokens, sequence_lengths: list[int] | None = None) -> None:
        """Append one document made of one or more sequences.

        ``tokens``: 1-D array of all the document's tokens. ``sequence_lengths``:
        how they split into sequences (default: one sequence); must sum to ``len(tokens)``.
        """
        self._check_open()
        arr = self._as_dtype(tokens)
        if sequence_lengths is None:
            sequence_lengths = [arr.size]
        elif sum(sequence_lengths) != arr.size:
            raise ValueError(
                f"{self.prefix}: sequence_lengths sum to {sum(sequence_lengths)} "
                f"but the document has {arr.size} tokens"
            )
        self._bin.write(arr.tobytes())
        self._lengths.extend(sequence_lengths)
        self._document_indices.append(len(self._lengths))

    def merge(self, other_prefix: str) -> None:
        """Append every document of the shard ``other_prefix`` (same dtype required)."""
        self._check_open()
        other = IndexedDataset(other_prefix)
        if other.dtype != self.dtype:
            raise ShardError(
                f"{idx_path(other_prefix)}: dtype {other.dtype} differs from the "
                f"writer's {self.dtype} ({self.prefix})"
            )
        offset = len(self._lengths)
        self._lengths.extend(other.sequence_lengths.tolist())
        self._document_indices.extend((other.document_indices[1:] + offset).tolist())
        del other  # release the mmaps before copying
        self._bin.flush()
        with open(bin_path(other_prefix), "rb") as src:
            shutil.copyfileobj(src, self._bin, _COPY_CHUNK)

    def finalize(self) -> None:
        """Write the index, then move ``.bin`` and ``.idx`` into place atomically."""
        self._check_open()
        self._closed = True
        try:
            self._bin.close()
            lengths = np.frombuffer(self._lengths, dtype=np.int32) if self._lengths else np.zeros(0, np.int32)
            pointers = np.zeros(len(lengths), dtype=np.int64)
            if len(lengths) > 1:
                np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
            documents = np.frombuffer(self._document_indices, dtype=np.int64)
            with open(self._idx_tmp, "wb") as f:
                f.write(INDEX_MAGIC)
                f.write(struct.pack("<Q", INDEX_VERSION))
                f.write(struct.pack("<B", dtype_code(self.dtype)))
                f.write(struct.pack("<Q", len(lengths)))
                f.write(struct.pack("<Q", len(documents)))
                f.write(lengths.astype("<i4").tobytes())
                f.write(pointers.astype("<i8").tobytes())
                f.write(documents.astype("<i8").tobytes())
            os.replace(self._bin_tmp, bin_path(self.prefix))
            os.replace(self._idx_tmp, idx_path(self.prefix))
        except BaseException:
            self._remove_temps()
            raise

    def abort(self) -> None:
        """Discard everything written so far (idempotent)."""
        if not self._closed:
            self._closed = True
            self._bin.close()
        self._remove_temps()

    def _remove_temps(self) -> None:
        _remove_quietly(self._bin_tmp)
        _remove_quietly(self._idx_tmp)


class IndexedDataset:
    """Memory-mapped, validating reader of one shard (see the module docstring for the layout).

    ``ds[i]`` is sequence ``i`` as a read-only numpy view into the ``.bin`` mmap;
    ``ds[a:b]`` a list of them; ``ds.get(i, offset, length)`` a slice of sequence ``i``.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        idx_file, data_file = idx_path(prefix), bin_path(prefix)
        for path in (idx_file, data_file):
            if not os.path.isfile(path):
                raise ShardError(f"{path}: shard file does not exist")

        idx_size = os.path.getsize(idx_file)
        if idx_size < _HEADER_SIZE:
            raise ShardError(f"{idx_file}: truncated index ({idx_size} bytes, header needs {_HEADER_SIZE})")
        with open(idx_file, "rb") as f:
            header = f.read(_HEADER_SIZE)
        if header[:9] != INDEX_MAGIC:
            raise ShardError(f"{idx_file}: bad magic {header[:9]!r}, expected {INDEX_MAGIC!r}")
        (version,) = struct.unpack_from("<Q", header, 9)
        if version != INDEX_VERSION:
            raise ShardError(f"{idx_file}: unsupported index version {version} (expected {INDEX_VERSION})")
        (code,) = struct.unpack_from("<B", header, 17)
        if code not in DTYPE_CODES:
            raise ShardError(f"{idx_file}: unknown dtype code {code} (valid: {sorted(DTYPE_CODES)})")
        self.dtype: np.dtype = DTYPE_CODES[code]
        num_seq, num_doc = struct.unpack_from("<QQ", header, 18)
        expected = _HEADER_SIZE + 12 * num_seq + 8 * num_doc
        if idx_size != expected:
            raise ShardError(
                f"{idx_file}: index is {idx_size} bytes but {num_seq} sequences and {num_doc} "
                f"document indices need {expected} (truncated or corrupt; multimodal shards "
                "with sequence modes are not supported)"
            )

        self._idx_mmap = np.memmap(idx_file, mode="r", dtype=np.uint8)
        self.sequence_lengths: np.ndarray = np.frombuffer(
            self._idx_mmap, dtype="<i4", count=num_seq, offset=_HEADER_SIZE
        )
        self.sequence_pointers: np.ndarray = np.frombuffer(
            self._idx_mmap, dtype="<i8", count=num_seq, offset=_HEADER_SIZE + 4 * num_seq
        )
        self.document_indices: np.ndarray = np.frombuffer(
            self._idx_mmap, dtype="<i8", count=num_doc, offset=_HEADER_SIZE + 12 * num_seq
        )
        self._validate_index(idx_file, num_seq)

        itemsize = self.dtype.itemsize
        num_tokens = int(self.sequence_lengths.sum(dtype=np.int64))
        bin_size = os.path.getsize(data_file)
        if bin_size != num_tokens * itemsize:
            raise ShardError(
                f"{data_file}: data file is {bin_size} bytes but the index describes "
                f"{num_tokens} tokens x {itemsize} bytes = {num_tokens * itemsize} (truncated or mismatched)"
            )
        self.num_tokens = num_tokens
        # np.memmap cannot map an empty file.
        self._bin_mmap = (
            np.memmap(data_file, mode="r", dtype=np.uint8) if bin_size else np.zeros(0, np.uint8)
        )

    def _validate_index(self, idx_file: str, num_seq: int) -> None:
        lengths, pointers, docs = self.sequence_lengths, self.sequence_pointers, self.document_indices
        if num_seq and int(lengths.min()) < 0:
            raise ShardError(f"{idx_file}: negative sequence length")
        expected = np.zeros(num_seq, dtype=np.int64)
        if num_seq > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=expected[1:])
        if not np.array_equal(pointers, expected):
            raise ShardError(f"{idx_file}: sequence pointers are not the running sum of the lengths")
        if len(docs) == 0 or docs[0] != 0 or docs[-1] != num_seq or np.any(np.diff(docs) < 0):
            raise ShardError(
                f"{idx_file}: document indices must start at 0, never decrease and end at {num_seq}"
            )

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    @property
    def num_documents(self) -> int:
        return len(self.document_indices) - 1

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``[offset, offset + length)`` of sequence ``i`` (to its end when length is None)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"{self.prefix}: sequence {i} out of range [0, {n})")
        i %= n
        size = int(self.sequence_lengths[i])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(
                f"{self.prefix}: slice [{offset}, {offset + length}) outside sequence {i} of length {size}"
            )
        start = int(self.sequence_pointers[i]) + offset * self.dtype.itemsize
        return np.frombuffer(self._bin_mmap, dtype=self.dtype, count=length, offset=start)

    def tokens(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """Tokens of sequences ``[start, end)`` concatenated: one read-only view, no copy.

        Sequences are contiguous in ``.bin``, so sequence ``j`` of the range is
        ``view[p_j : p_j + length_j]`` with ``p_j = (pointer_j - pointer_start) / itemsize``.
        """
        n = len(self)
        end = n if end is None else end
        if not 0 <= start <= end <= n:
            raise IndexError(f"{self.prefix}: sequence range [{start}, {end}) outside [0, {n})")
        first = int(self.sequence_pointers[start]) if start < n else self.num_tokens * self.dtype.itemsize
        count = int(self.sequence_lengths[start:end].sum(dtype=np.int64))
        return np.frombuffer(self._bin_mmap, dtype=self.dtype, count=count, offset=first)

    def token_bounds(self, block_tokens: int = 1 << 26) -> tuple[int, int] | None:
        """``(min, max)`` token id of the whole shard (None when it has no tokens).

        Read in blocks of ``block_tokens`` so memory stays bounded on big shards.
        """
        view = self.tokens()
        if view.size == 0:
            return None
        blocks = [view[a : a + block_tokens] for a in range(0, view.size, block_tokens)]
        return min(int(b.min()) for b in blocks), max(int(b.max()) for b in blocks)

    def document_last_tokens(self) -> np.ndarray:
        """Last token of every document that has tokens (int64, in document order).

        Sequences are contiguous, so document d spans tokens ``[b[D_d], b[D_{d+1}])``
        with ``b`` the token offset of every sequence start plus the total (S + 1
        entries) and ``D`` the document indices; zero-token documents are left out.
        """
        bounds = np.append(self.sequence_pointers // self.dtype.itemsize, self.num_tokens)[self.document_indices]
        ends = bounds[1:][bounds[1:] > bounds[:-1]]
        return self.tokens()[ends - 1].astype(np.int64)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.get(j) for j in range(*i.indices(len(self)))]
        return self.get(int(i))

    def document(self, d: int) -> list[np.ndarray]:
        """The sequences of document ``d``."""
        start, end = int(self.document_indices[d]), int(self.document_indices[d + 1])
        return [self.get(j) for j in range(start, end)]
