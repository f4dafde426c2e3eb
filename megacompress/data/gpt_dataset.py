"""Fixed-length GPT samples over the concatenation of a shard's documents.

Token stream. Each sequence of the shard is one document (as in Megatron's GPT
dataset). A document epoch is one pass over the non-empty documents of
``document_range`` in a shuffled order (a fresh permutation per epoch, see
``shuffle``); epochs are concatenated into one stream of T tokens per epoch. If
the shard was packed without ``--append-eod``, set ``add_eod=True`` and an EOD
token is inserted virtually after every document (never both: the builder reads
the shard's ``meta.json`` or, for a shard without one, its documents' last
tokens). Zero-token documents (an empty field of a multi-key corpus) are
skipped, EOD or not.

Samples. Sample ``i`` is stream tokens ``[i * S, i * S + S]`` inclusive
(S = ``seq_length``): S + 1 tokens, so consecutive samples share one token and
every stream token except the very first is a target exactly once. Sample i
belongs to epoch ``floor(i * S / T)`` (the epoch of its first token), so epoch e
holds samples ``[a_e, a_{e+1})`` with ``a_e = ceil(e * T / S)``.

Order. The items are the first ``num_samples`` entries of the concatenation over
epochs of a per-epoch permutation of each epoch's samples; enough whole epochs
are built to cover ``num_samples`` (the last one partly used). Both the document
order and the sample order of epoch e depend only on (seed, e), so growing
``num_samples`` (resuming with more steps) keeps every item seen so far:
item k is the same for any ``num_samples > k``.

Cached indices (see ``index_cache``), with M >= num_samples built samples:

* ``doc_idx``    int32 ``[num_doc_epochs * num_docs]``: shard sequence ids in stream order;
* ``sample_idx`` int64 ``[M + 1, 2]``: row i = (position in ``doc_idx``,
  token offset inside that document) where sample i starts; sample i ends at the
  start of sample i + 1 (inclusive);
* ``shuffle_idx`` int64 ``[num_samples]``: dataset index -> sample index.

Item ``k`` is sample ``shuffle_idx[k]`` as numpy arrays of length S:

* ``input_ids``    = tokens[:-1];
* ``labels``       = tokens[1:], ``-100`` where the target belongs to another
  document than the input (the last token of each document piece, e.g. an EOD,
  does not predict the next document's first token);
* ``document_ids`` = 0, 1, 2, ... for each document piece inside the sample;
* ``position_ids`` restart at 0 at the start of every piece, including a piece
  that continues a document from the previous sample (as Megatron's
  ``reset_position_ids``), so positions never exceed S - 1.

Randomness: per-epoch numpy ``Generator`` streams only (``shuffle``), so the same
configuration gives the same order on every machine.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

from megacompress.data.collate import TOKEN_BATCH_KEYS
from megacompress.data.index_cache import load_or_build, open_document_range, shard_digest
from megacompress.data.shuffle import DOCUMENTS, SAMPLES, epoch_permutations


@dataclass(frozen=True)
class GPTDatasetConfig:
    """Everything the sample order depends on (all of it goes into the cache key).

    ``num_samples=None`` means the samples of the first epoch (``ceil(T / S)``);
    ``shuffle=False`` keeps documents in shard order and samples in stream order.
    ``document_range`` is a half-open range of shard sequence ids (``None``: all),
    used for train/valid/test splits.
    """

    seq_length: int
    eod_id: int
    num_samples: int | None = None
    seed: int = 1234
    add_eod: bool = False
    shuffle: bool = True
    document_range: tuple[int, int] | None = None


class GPTDataset:
    """Map-style dataset of fixed-length samples; see the module docstring for the layout."""

    batch_keys = TOKEN_BATCH_KEYS

    def __init__(self, prefix: str, config: GPTDatasetConfig, cache_dir: str | os.PathLike | None = None):
        self.prefix = prefix
        self.config = config
        self.shard, self.document_range = open_document_range(prefix, config.seq_length, config.document_range)
        start, end = self.document_range
        key = {"shard": shard_digest(prefix), **asdict(config), "document_range": [start, end]}
        cached = load_or_build("GPTDataset", key, self._build_indices, cache_dir)
        self.cache = cached
        self.doc_idx = cached.arrays["doc_idx"]
        self.sample_idx = cached.arrays["sample_idx"]
        self.shuffle_idx = cached.arrays["shuffle_idx"]
        self._lengths = self._doc_lengths()

    def _doc_lengths(self) -> np.ndarray:
        """Stream length of every shard sequence (with the virtual EOD if ``add_eod``)."""
        return self.shard.sequence_lengths.astype(np.int64) + int(self.config.add_eod)

    def _build_indices(self) -> dict[str, np.ndarray]:
        cfg = self.config
        S = cfg.seq_length
        lengths = self._doc_lengths()
        start, end = self.document_range
        docs = np.arange(start, end, dtype=np.int64)
        docs = docs[self.shard.sequence_lengths[docs] > 0]
        tokens_per_epoch = int(lengths[docs].sum())
        if tokens_per_epoch < 2:
            raise ValueError(f"{self.prefix}: documents {self.document_range} hold {tokens_per_epoch} tokens; "
                             "need at least 2 for one sample")
        T = tokens_per_epoch
        num_samples = -(-T // S) if cfg.num_samples is None else cfg.num_samples
        # Sample epochs covering num_samples items; a[e] = first sample of epoch e.
        sample_epochs = 0 if num_samples == 0 else (num_samples - 1) * S // T + 1
        a = -(-np.arange(sample_epochs + 1, dtype=np.int64) * T // S)
        built = int(a[-1])
        doc_epochs = -(-(built * S + 1) // T)  # the last sample's tokens may reach into later epochs

        doc_idx = docs[epoch_permutations(cfg.seed, DOCUMENTS, [len(docs)] * doc_epochs, cfg.shuffle)]

        # Start token of every document in the stream, then locate each sample start in it.
        doc_starts = np.zeros(len(doc_idx) + 1, dtype=np.int64)
        np.cumsum(lengths[doc_idx], out=doc_starts[1:])
        sample_starts = np.arange(built + 1, dtype=np.int64) * S
        # side="right" skips nothing here (no empty documents) and maps a start that
        # falls exactly on a document boundary to the later document.
        position = np.searchsorted(doc_starts, sample_starts, side="right") - 1
        sample_idx = np.stack([position, sample_starts - doc_starts[position]], axis=1).astype(np.int64)

        sizes = np.diff(a)
        shuffle_idx = epoch_permutations(cfg.seed, SAMPLES, sizes.tolist(), cfg.shuffle) + np.repeat(a[:-1], sizes)
        return {"doc_idx": doc_idx.astype(np.int32), "sample_idx": sample_idx,
                "shuffle_idx": shuffle_idx[:num_samples]}

    def __len__(self) -> int:
        return len(self.shuffle_idx)

    def _piece(self, doc: int, begin: int, end: int) -> np.ndarray:
        """Stream tokens ``[begin, end)`` of document ``doc`` (virtual EOD included)."""
        real_length = int(self.shard.sequence_lengths[doc])
        real_end = max(min(end, real_length), begin)
        tokens = self.shard.get(doc, offset=begin, length=real_end - begin).astype(np.int64)
        if end > real_length:  # only possible with add_eod: the virtual EOD is the last stream token
            tokens = np.append(tokens, self.config.eod_id)
        return tokens

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.prefix}: index {index} out of range for {len(self)} samples")
        sample = int(self.shuffle_idx[index])
        first_pos, first_offset = (int(v) for v in self.sample_idx[sample])
        last_pos, last_offset = (int(v) for v in self.sample_idx[sample + 1])
        lengths = self._lengths
        pieces, doc_ids, positions = [], [], []
        for ordinal, pos in enumerate(range(first_pos, last_pos + 1)):
            doc = int(self.doc_idx[pos])
            begin = first_offset if pos == first_pos else 0
            end = last_offset + 1 if pos == last_pos else int(lengths[doc])
            piece = self._piece(doc, begin, end)
            pieces.append(piece)
            doc_ids.append(np.full(len(piece), ordinal, dtype=np.int64))
            positions.append(np.arange(len(piece), dtype=np.int64))
        tokens = np.concatenate(pieces)
        document_ids = np.concatenate(doc_ids)
        position_ids = np.concatenate(positions)
        assert len(tokens) == self.config.seq_length + 1, (self.prefix, index, len(tokens))
        labels = tokens[1:].copy()
        labels[document_ids[1:] != document_ids[:-1]] = -100
        return {
            "input_ids": tokens[:-1],
            "labels": labels,
            "position_ids": position_ids[:-1],
            "document_ids": document_ids[:-1],
        }
