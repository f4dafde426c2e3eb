"""Bitstream shards: compressed-text tokens in the project's ``.bin/.idx`` plus what decoding needs.

Files of one shard ``PREFIX``:

* ``PREFIX.bin/.idx``: Megatron layout (``megacompress.data.indexed``), sequence i =
  document i's tokens; dtype uint8 (v256) or uint16 (v65k). Every stored value is a real
  token; nothing marks document ends (the dataset inserts the tokenizer's eod id).
* ``PREFIX.docs.bin/.idx``: same layout, int64, sequence i = ``[byte_length, windows,
  crc32]`` of document i (crc32 of its original UTF-8 bytes, checked after decoding).
* ``PREFIX.meta.json``: ``files`` (size and sha256 of the four files above, checked before
  decoding and by the training data builder: ``index_cache.verify_files``), ``tokenizer``
  (the ``BitstreamTokenizer`` section the training data builder checks), ``flags.append_eod``
  (false), ``codec`` (``CodecConfig.to_dict()``), ``m1`` (``{"hash", "path"}`` or null), ``counts`` (documents, bytes, tokens, windows,
  undecodable windows / documents, skipped records) and ``inputs``.

``read_documents`` refuses a shard whose M1 hash differs from the given M1 and raises
``CorruptStreamError`` naming the shard file and document for a stream that does not
decode to its recorded length and checksum.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from megacompress.errors import UserError
from megacompress.atomic import write_text_atomic
from megacompress.methods.equal_info.codec import CodecConfig, CorruptStreamError, EncodedDocument
from megacompress.methods.equal_info.tokenizer import BitstreamTokenizer
from megacompress.data.index_cache import file_records, verify_files
from megacompress.data.indexed import IndexedDataset, IndexedDatasetWriter

DOCS_SUFFIX = ".docs"
SHARD_SUFFIXES = (".bin", ".idx", DOCS_SUFFIX + ".bin", DOCS_SUFFIX + ".idx")  # the files meta.json records


class ShardMismatchError(UserError, ValueError):
    """A shard was made with another M1 or codec than the one given; names the file."""


def meta_path(prefix: str) -> str:
    return f"{prefix}.meta.json"


class BitstreamShardWriter:
    """Streams documents into ``PREFIX`` (tokens + docs sidecar); ``finalize`` renames both into place."""

    def __init__(self, prefix: str, config: CodecConfig):
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        self.prefix, self.config = prefix, config
        self.tokens = IndexedDatasetWriter(prefix, config.dtype)
        self.docs = IndexedDatasetWriter(prefix + DOCS_SUFFIX, np.int64)
        self.counts = {"documents": 0, "bytes": 0, "tokens": 0, "windows": 0, "undecodable_windows": 0,
                       "undecodable_documents": 0}

    def add(self, data: bytes, encoded: EncodedDocument) -> None:
        self.tokens.add_document(encoded.tokens)
        self.docs.add_document(np.array([len(data), encoded.windows, zlib.crc32(data)], np.int64))
        c = self.counts
        c["documents"] += 1
        c["bytes"] += len(data)
        c["tokens"] += len(encoded.tokens)
        c["windows"] += encoded.windows
        c["undecodable_windows"] += encoded.undecodable_windows
        c["undecodable_documents"] += int(encoded.undecodable_windows > 0)

    def merge(self, other_prefix: str) -> None:
        """Append a finished shard (a partition) and its counts."""
        self.tokens.merge(other_prefix)
        self.docs.merge(other_prefix + DOCS_SUFFIX)
        other = read_meta(other_prefix)["counts"]
        for key in self.counts:
            self.counts[key] += other[key]

    def finalize(self, m1_hash: str | None, m1_path: str | None, extra: dict | None = None) -> dict:
        self.tokens.finalize()
        self.docs.finalize()
        meta = {
            "files": file_records(self.prefix, list(SHARD_SUFFIXES)),
            "tokenizer": BitstreamTokenizer(self.config, m1_hash).meta(),
            "flags": {"append_eod": False},
            "codec": self.config.to_dict(),
            "m1": None if m1_hash is None else {"hash": m1_hash, "path": m1_path},
            "counts": self.counts,
            **(extra or {}),
        }
        write_text_atomic(meta_path(self.prefix), json.dumps(meta, indent=2) + "\n")
        return meta

    def abort(self) -> None:
        self.tokens.abort()
        self.docs.abort()


def read_meta(prefix: str) -> dict:
    path = meta_path(prefix)
    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardMismatchError(f"{path}: missing (not a bitstream shard written by tools/compress_corpus.py)") \
            from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardMismatchError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("codec"), dict) or "counts" not in meta:
        raise ShardMismatchError(f"{path}: no 'codec' section: not a bitstream shard")
    return meta


def check_m1(prefix: str, meta: dict, m1_hash: str | None) -> None:
    """Refuse decoding with an M1 other than the one the shard was made with."""
    recorded = meta.get("m1")
    if recorded is None:
        return
    if m1_hash is None:
        raise ShardMismatchError(f"{meta_path(prefix)}: scheme {meta['codec']['scheme']} needs M1 "
                                 f"{recorded['hash'][:12]} ({recorded['path']}); pass --m1")
    if recorded["hash"] != m1_hash:
        raise ShardMismatchError(f"{meta_path(prefix)}: shard was compressed with M1 {recorded['hash'][:12]} "
                                 f"({recorded['path']}), but the given M1 is {m1_hash[:12]}; decode with the same M1")


def document_info(prefix: str) -> np.ndarray:
    """int64 [documents, 3]: byte length, windows, crc32 of each document."""
    side = IndexedDataset(prefix + DOCS_SUFFIX)
    info = side.tokens(0, len(side)).reshape(-1, 3) if len(side) else np.zeros((0, 3), np.int64)
    if len(info) != len(side) or (len(side) and (side.sequence_lengths != 3).any()):
        raise CorruptStreamError(f"{prefix}{DOCS_SUFFIX}.idx: every document needs 3 entries")
    return np.asarray(info, np.int64)


def read_documents(prefix: str, codec, m1_hash: str | None, start: int = 0, end: int | None = None):
    """Decoded bytes of documents ``[start, end)``, each verified against its length and crc32."""
    meta = read_meta(prefix)
    check_m1(prefix, meta, m1_hash)
    verify_files(prefix, meta)  # hashed once per process (its cost: index_cache.verify_files)
    shard = IndexedDataset(prefix)
    info = document_info(prefix)
    if len(info) != len(shard):
        raise CorruptStreamError(f"{prefix}.idx: {len(shard)} documents but {prefix}{DOCS_SUFFIX}.idx lists "
                                 f"{len(info)}")
    end = len(shard) if end is None else end
    items = [(np.asarray(shard[i], np.int64), int(info[i, 0]), int(info[i, 1])) for i in range(start, end)]
    try:
        decoded = codec.decode(items)
    except CorruptStreamError as exc:
        msg = str(exc)
        if msg.startswith("document "):  # codec indices are relative to this block
            rel, rest = msg[len("document "):].split(":", 1)
            msg = f"document {start + int(rel)}:{rest}"
        raise CorruptStreamError(f"{prefix}.bin: {msg}") from None
    for i, data in enumerate(decoded):
        d = start + i
        if len(data) != info[d, 0] or zlib.crc32(data) != info[d, 2]:
            raise CorruptStreamError(f"{prefix}.bin: document {d}: decoded {len(data)} bytes with crc32 "
                                     f"{zlib.crc32(data):08x}, recorded {info[d, 0]} bytes, crc32 {info[d, 2]:08x}")
    return decoded
