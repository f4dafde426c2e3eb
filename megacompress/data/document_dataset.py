"""One document (or one chunk of a long document) per sample, right-padded.

Used by GPTHF and gist training, where attention must never mix documents and
sentence structure must survive. Each shard sequence is one document of L tokens.

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
  than S) the chunk is cut at ``s + S`` mid-sentence.

Cached indices (see ``index_cache``):

* ``chunks`` int64 ``[num_chunks, 3]``: (shard sequence id, s, t), in document order;
* ``order``  int64 ``[num_samples]``: dataset index -> chunk row; epochs of
  (optionally shuffled, fresh permutation per epoch) chunk orders, concatenated
  and cut at ``num_samples`` (``None``: one epoch).

Item layout (numpy, length S; n = t - s real positions, then padding):

* ``input_ids``    tokens, then ``pad_id``;
* ``labels``       next tokens, ``-100`` on padding;
* ``position_ids`` 0..n-1 (positions inside the chunk), 0 on padding;
* ``document_ids`` 0 on real tokens, ``-1`` on padding;
* ``eos_mask``     (only with sentences) True at EOS input positions.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
from tqdm import tqdm

from megacompress.data.index_cache import load_or_build, open_document_range, shard_digest
from megacompress.data.indexed import IndexedDataset, ShardError, shard_exists


def eos_prefix(prefix: str) -> str:
    """Prefix of the sentence-boundary sidecar shard of ``prefix``."""
    return prefix + ".eos"


@dataclass(frozen=True)
class DocumentDatasetConfig:
    """Everything the sample order depends on (all of it goes into the cache key).

    ``use_sentences=None`` uses the sidecar when it exists; True requires it.
    """

    seq_length: int
    pad_id: int
    num_samples: int | None = None
    seed: int = 1234
    shuffle: bool = True
    document_range: tuple[int, int] | None = None
    use_sentences: bool | None = None


def _sentence_chunks(doc: int, length: int, eos: np.ndarray, seq_length: int) -> list[tuple[int, int, int]]:
    """Greedy sentence-aligned chunks of one document longer than ``seq_length + 1``."""
    starts = eos.astype(np.int64) + 1  # sentence starts, sorted ascending
    chunks, s = [], 0
    while s < length - 1:
        limit = s + seq_length
        if length - 1 <= limit:
            t = length - 1
        else:
            k = np.searchsorted(starts, limit, side="right") - 1  # last start <= limit
            t = int(starts[k]) if k >= 0 and starts[k] > s else limit
        chunks.append((doc, s, t))
        s = t
    return chunks


class DocumentDataset:
    """Map-style dataset of padded single-document samples; layout in the module docstring."""

    def __init__(self, prefix: str, config: DocumentDatasetConfig, cache_dir: str | os.PathLike | None = None):
        self.prefix = prefix
        self.config = config
        self.shard, self.document_range = open_document_range(prefix, config.seq_length, config.document_range)
        start, end = self.document_range

        has_sidecar = shard_exists(eos_prefix(prefix))
        if config.use_sentences and not has_sidecar:
            raise ShardError(f"{eos_prefix(prefix)}.idx: sentence sidecar required (use_sentences=True) but "
                             "missing; preprocess with --split-sentences")
        self.use_sentences = has_sidecar if config.use_sentences is None else config.use_sentences
        self.eos = IndexedDataset(eos_prefix(prefix)) if self.use_sentences else None
        if self.eos is not None and len(self.eos) != len(self.shard):
            raise ShardError(f"{eos_prefix(prefix)}.idx: {len(self.eos)} sequences but the main shard "
                             f"{prefix} has {len(self.shard)}")

        key = {"shard": shard_digest(prefix), **asdict(config), "document_range": [start, end],
               "use_sentences": self.use_sentences,
               "eos_shard": shard_digest(eos_prefix(prefix)) if self.use_sentences else None}
        cached = load_or_build("DocumentDataset", key, self._build_indices, cache_dir)
        self.cache = cached
        self.chunks = cached.arrays["chunks"]
        self.order = cached.arrays["order"]

    def _build_chunks(self) -> np.ndarray:
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
            return np.stack([chunk_doc, s, t], axis=1).astype(np.int64)
        short = lengths <= S + 1
        rows = [np.stack([docs[short], np.zeros(short.sum(), np.int64), lengths[short] - 1], axis=1)]
        long_rows = [chunk
                     for doc, length in tqdm(zip(docs[~short].tolist(), lengths[~short].tolist()),
                                             total=int((~short).sum()), desc=f"chunking {self.prefix}",
                                             disable=(~short).sum() < 10_000)
                     for chunk in _sentence_chunks(doc, length, self.eos.get(doc), S)]
        if long_rows:
            rows.append(np.asarray(long_rows, dtype=np.int64))
        chunks = np.concatenate(rows).astype(np.int64)
        return chunks[np.lexsort((chunks[:, 1], chunks[:, 0]))]  # document order

    def _build_indices(self) -> dict[str, np.ndarray]:
        cfg = self.config
        chunks = self._build_chunks()
        if len(chunks) == 0:
            raise ValueError(f"{self.prefix}: documents {self.document_range} contain no document "
                             "with at least 2 tokens")
        num_samples = len(chunks) if cfg.num_samples is None else cfg.num_samples
        num_epochs = max(1, -(-num_samples // len(chunks)))  # num_samples=0: an unsampled blend part
        rng = np.random.Generator(np.random.PCG64(cfg.seed))
        rows = np.arange(len(chunks), dtype=np.int64)
        order = np.concatenate([rng.permutation(rows) if cfg.shuffle else rows for _ in range(num_epochs)])
        return {"chunks": chunks, "order": order[:num_samples]}

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
