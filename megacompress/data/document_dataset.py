"""One document (or one chunk of a long document) per sample, right-padded.

Used by the methods whose attention must never mix documents and whose sentence
structure must survive. Each shard sequence is one document of L tokens.

Chunks. A sample holds inputs ``doc[s:t]`` and targets ``doc[s+1:t+1]`` for a
chunk ``(doc, s, t)`` with ``0 < t - s <= S`` (S = ``seq_length``); the next
chunk of the same document starts at ``t``, so every token except the
document's first is a target exactly once and a document with
``L <= S + 1`` is one chunk ``(doc, 0, L - 1)``. Documents with ``L < 2`` have no
target and are skipped. Split points ``t``:

* without sentences: ``t = min(s + S, L - 1)``;
* with the sentence sidecar ``PREFIX.eos`` (sequence i = int32 in-document
  offsets of document i's sentence-end tokens): ``t`` is the last sentence start
  (EOS offset + 1) in ``(s, s + S]``, so each chunk's inputs are whole sentences
  ending with an EOS; if that window holds no sentence start (a sentence longer
  than S) the chunk is cut at ``s + S`` mid-sentence. Such cuts are counted
  (``cut_sentences``, cached with the index) and reported in one warning.

Sidecar check. When the index is built, ``check_eos_sidecar`` verifies, for every
document of the range, that its offsets are strictly increasing, each is inside
the document and points at an ``eos_id`` token, and there is one per ``eos_id``
token of the document; otherwise ``ShardError`` names the sidecar and the document.

Cached indices (see ``index_cache``):

* ``chunks`` int64 ``[num_chunks, 3]``: (shard sequence id, s, t), in document order;
* ``cut_sentences`` int64 ``[1]``: chunks cut inside a sentence longer than S;
* ``order``  int64 ``[num_samples]``: dataset index -> chunk row; epochs of
  (optionally shuffled, fresh permutation per epoch, see ``shuffle``) chunk
  orders, concatenated and cut at ``num_samples`` (``None``: one epoch), so
  growing ``num_samples`` keeps every item seen so far.

Item layout (numpy, length S; n = t - s real positions, then padding):

* ``input_ids``    tokens, then ``pad_id``;
* ``labels``       next tokens, ``-100`` on padding;
* ``position_ids`` 0..n-1 (positions inside the chunk), 0 on padding;
* ``document_ids`` 0 on real tokens, ``-1`` on padding;
* ``eos_mask``     (only with sentences) True at EOS input positions.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from megacompress.data.collate import TOKEN_BATCH_KEYS
from megacompress.data.index_cache import load_or_build, open_document_range, shard_digest
from megacompress.data.indexed import IndexedDataset, ShardError, bin_path, idx_path, shard_exists
from megacompress.data.shuffle import CHUNKS, epoch_permutations
from megacompress.progress import progress

SENTENCE_BATCH_KEYS = TOKEN_BATCH_KEYS | {"eos_mask"}


def eos_prefix(prefix: str) -> str:
    """Prefix of the sentence-boundary sidecar shard of ``prefix``."""
    return prefix + ".eos"


@dataclass(frozen=True)
class DocumentDatasetConfig:
    """Everything the sample order depends on (all of it goes into the cache key).

    ``use_sentences=None`` uses the sidecar when it exists; True requires it.
    ``eos_id`` (the tokenizer's ``<|endofsentence|>``) is required with the sidecar,
    whose offsets are checked against it.
    """

    seq_length: int
    pad_id: int
    num_samples: int | None = None
    seed: int = 1234
    shuffle: bool = True
    document_range: tuple[int, int] | None = None
    use_sentences: bool | None = None
    eos_id: int | None = None


def _document_blocks(lengths: np.ndarray, block_tokens: int) -> Iterator[tuple[int, int]]:
    """Consecutive document ranges ``[a, b)`` of about ``block_tokens`` tokens (at least one document)."""
    ends = np.cumsum(lengths)
    a = 0
    while a < len(lengths):
        base = int(ends[a - 1]) if a else 0
        b = max(a + 1, int(np.searchsorted(ends, base + block_tokens, side="right")))
        yield a, b
        a = b


def check_eos_sidecar(shard: IndexedDataset, eos: IndexedDataset, eos_id: int,
                      document_range: tuple[int, int], block_tokens: int = 1 << 24) -> None:
    """``ShardError`` unless ``eos`` lists exactly the ``eos_id`` tokens of every document in range.

    Vectorised over blocks of about ``block_tokens`` tokens, so memory stays bounded.
    """
    start, end = document_range
    for a, b in _document_blocks(shard.sequence_lengths[start:end].astype(np.int64), block_tokens):
        _check_eos_block(shard, eos, eos_id, start + a, start + b)


def _first(mask: np.ndarray) -> int | None:
    """Index of the first True entry, None if there is none."""
    return int(np.argmax(mask)) if mask.any() else None


def _check_eos_block(shard: IndexedDataset, eos: IndexedDataset, eos_id: int, a: int, b: int) -> None:
    lengths = shard.sequence_lengths[a:b].astype(np.int64)
    counts = eos.sequence_lengths[a:b].astype(np.int64)
    offsets = eos.tokens(a, b).astype(np.int64)
    owner = np.repeat(np.arange(b - a), counts)  # block-local document of each offset
    doc_start = np.cumsum(lengths) - lengths  # block-local token start of each document
    tokens = shard.tokens(a, b)

    def fail(doc: int, problem: str):
        raise ShardError(f"{idx_path(eos.prefix)}: document {a + doc}: {problem}")

    # In order: each check may index with what the previous ones validated.
    if (k := _first((offsets < 0) | (offsets >= lengths[owner]))) is not None:
        fail(owner[k], f"EOS offset {offsets[k]} is outside the document ({lengths[owner[k]]} tokens)")
    found = tokens[doc_start[owner] + offsets]
    if (k := _first(found != eos_id)) is not None:
        fail(owner[k], f"offset {offsets[k]} holds token {found[k]}, not the EOS id {eos_id}")
    if (k := _first((owner[1:] == owner[:-1]) & (offsets[1:] <= offsets[:-1]))) is not None:
        fail(owner[k + 1], f"offsets are not strictly increasing ({offsets[k]} then {offsets[k + 1]})")
    # side="right": a token at the start shared by empty documents belongs to the last of them, the non-empty one.
    actual = np.bincount(np.searchsorted(doc_start, np.flatnonzero(tokens == eos_id), side="right") - 1,
                         minlength=b - a)
    if (k := _first(actual != counts)) is not None:
        fail(k, f"holds {actual[k]} EOS tokens but the sidecar lists {counts[k]} offsets")


def _sentence_chunks(doc: int, length: int, eos: np.ndarray,
                     seq_length: int) -> tuple[list[tuple[int, int, int]], int]:
    """Greedy sentence-aligned chunks of one document longer than ``seq_length + 1``, and how
    many of them are cut mid-sentence (inside a sentence longer than ``seq_length``)."""
    starts = eos.astype(np.int64) + 1  # sentence starts, sorted ascending
    chunks, s, cuts = [], 0, 0
    while s < length - 1:
        limit = s + seq_length
        if length - 1 <= limit:
            t = length - 1
        else:
            k = np.searchsorted(starts, limit, side="right") - 1  # last start <= limit
            t = int(starts[k]) if k >= 0 and starts[k] > s else limit
            cuts += t == limit and limit not in starts
        chunks.append((doc, s, t))
        s = t
    return chunks, cuts


def check_sidecar_files(prefix: str, recorded_in: str | None = None) -> None:
    """``ShardError`` for a sidecar ``prefix`` with one of its two files gone (damage, not "no
    sentences"), or with both gone while ``recorded_in`` (the shard's meta.json) says it was written."""
    paths = (bin_path(prefix), idx_path(prefix))
    missing = [path for path in paths if not os.path.isfile(path)]
    if len(missing) == 1:
        raise ShardError(f"{missing[0]}: missing, but the rest of the sentence sidecar {prefix} is there")
    if missing and recorded_in:
        raise ShardError(f"{paths[0]}, {paths[1]}: missing, but {recorded_in} records the sentence sidecar "
                         "(set data.use_sentences=false to train without sentences)")


class DocumentDataset:
    """Map-style dataset of padded single-document samples; layout in the module docstring."""

    def __init__(self, prefix: str, config: DocumentDatasetConfig, cache_dir: str | os.PathLike | None = None):
        self.prefix = prefix
        self.config = config
        self.shard, self.document_range = open_document_range(prefix, config.seq_length, config.document_range)
        start, end = self.document_range

        has_sidecar = shard_exists(eos_prefix(prefix))
        if config.use_sentences is not False:
            check_sidecar_files(eos_prefix(prefix))
        if config.use_sentences and not has_sidecar:
            raise ShardError(f"{eos_prefix(prefix)}.idx: sentence sidecar required (use_sentences=True) but "
                             "missing; preprocess with --split-sentences")
        self.use_sentences = has_sidecar if config.use_sentences is None else config.use_sentences
        self.eos = IndexedDataset(eos_prefix(prefix)) if self.use_sentences else None
        if self.eos is not None and len(self.eos) != len(self.shard):
            raise ShardError(f"{eos_prefix(prefix)}.idx: {len(self.eos)} sequences but the main shard "
                             f"{prefix} has {len(self.shard)}")
        if self.eos is not None and config.eos_id is None:
            raise ValueError(f"{prefix}: eos_id is needed to check the sentence sidecar {eos_prefix(prefix)}")
        self.batch_keys = SENTENCE_BATCH_KEYS if self.use_sentences else TOKEN_BATCH_KEYS

        key = {"shard": shard_digest(prefix), **asdict(config), "document_range": [start, end], "format": 2,
               "use_sentences": self.use_sentences,
               "eos_shard": shard_digest(eos_prefix(prefix)) if self.use_sentences else None}
        cached = load_or_build("DocumentDataset", key, self._build_indices, cache_dir)
        self.cache = cached
        self.chunks = cached.arrays["chunks"]
        self.order = cached.arrays["order"]
        self.cut_sentences = int(cached.arrays["cut_sentences"][0])
        if self.cut_sentences:
            warnings.warn(f"{prefix}: {self.cut_sentences} chunk(s) cut inside a sentence longer than "
                          f"seq_length {config.seq_length}", stacklevel=2)

    def _build_chunks(self) -> tuple[np.ndarray, int]:
        S = self.config.seq_length
        start, end = self.document_range
        docs = np.arange(start, end, dtype=np.int64)
        lengths = self.shard.sequence_lengths[start:end].astype(np.int64)
        keep = lengths >= 2
        docs, lengths = docs[keep], lengths[keep]
        if self.eos is None:
            # Vectorised: document d has ceil((L - 1) / S) chunks starting at multiples of S.
            counts = -(-(lengths - 1) // S)
            chunk_doc = np.repeat(docs, counts)
            first = np.repeat(np.cumsum(counts) - counts, counts)
            s = (np.arange(len(chunk_doc)) - first) * S
            t = np.minimum(s + S, np.repeat(lengths, counts) - 1)
            return np.stack([chunk_doc, s, t], axis=1).astype(np.int64), 0
        short = lengths <= S + 1
        rows = [np.stack([docs[short], np.zeros(short.sum(), np.int64), lengths[short] - 1], axis=1)]
        long_rows, cuts = [], 0
        for doc, length in progress(zip(docs[~short].tolist(), lengths[~short].tolist()),
                                    total=int((~short).sum()), desc=f"chunking {self.prefix}",
                                    enabled=(~short).sum() >= 10_000):
            doc_chunks, doc_cuts = _sentence_chunks(doc, length, self.eos.get(doc), S)
            long_rows += doc_chunks
            cuts += doc_cuts
        if long_rows:
            rows.append(np.asarray(long_rows, dtype=np.int64))
        chunks = np.concatenate(rows).astype(np.int64)
        return chunks[np.lexsort((chunks[:, 1], chunks[:, 0]))], cuts  # document order

    def _build_indices(self) -> dict[str, np.ndarray]:
        cfg = self.config
        if self.eos is not None:  # once per index build, not per item
            check_eos_sidecar(self.shard, self.eos, cfg.eos_id, self.document_range)
        chunks, cuts = self._build_chunks()
        if len(chunks) == 0:
            raise ValueError(f"{self.prefix}: documents {self.document_range} contain no document "
                             "with at least 2 tokens")
        num_samples = len(chunks) if cfg.num_samples is None else cfg.num_samples
        num_epochs = max(1, -(-num_samples // len(chunks)))  # num_samples=0: an unsampled blend part
        order = epoch_permutations(cfg.seed, CHUNKS, [len(chunks)] * num_epochs, cfg.shuffle)
        return {"chunks": chunks, "order": order[:num_samples], "cut_sentences": np.array([cuts], np.int64)}

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.prefix}: index {index} out of range for {len(self)} samples")
        S = self.config.seq_length
        doc, s, t = (int(v) for v in self.chunks[int(self.order[index])])
        n = t - s
        tokens = self.shard.get(doc, offset=s, length=n + 1).astype(np.int64)
        input_ids = np.full(S, self.config.pad_id, dtype=np.int64)
        labels = np.full(S, -100, dtype=np.int64)
        position_ids = np.zeros(S, dtype=np.int64)
        document_ids = np.full(S, -1, dtype=np.int64)
        input_ids[:n] = tokens[:-1]
        labels[:n] = tokens[1:]
        position_ids[:n] = np.arange(n)
        document_ids[:n] = 0
        sample = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
                  "document_ids": document_ids}
        if self.eos is not None:
            eos = self.eos.get(doc).astype(np.int64)
            eos = eos[(eos >= s) & (eos < t)] - s
            eos_mask = np.zeros(S, dtype=bool)
            eos_mask[eos] = True
            sample["eos_mask"] = eos_mask
        return sample
