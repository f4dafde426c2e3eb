"""Fixed-length GPT samples over the concatenation of a shard's documents.

Token stream. Each sequence of the shard is one document (as in Megatron's GPT
dataset). An epoch is one pass over the documents of ``document_range`` in a
shuffled order (a fresh permutation per epoch); epochs are concatenated until
the stream holds ``num_samples * seq_length + 1`` tokens. If the shard was
packed without ``--append-eod``, set ``add_eod=True`` and an EOD token is
inserted virtually after every document (never both: the builder reads the
shard's ``meta.json`` to decide). Empty documents are skipped.

Samples. Sample ``i`` (before shuffling) is stream tokens
``[i * S, i * S + S]`` inclusive (S = ``seq_length``): S + 1 tokens, so
consecutive samples share one token and every stream token except the very
first is a target exactly once.

Cached indices (see ``index_cache``):

* ``doc_idx``    int32 ``[num_epochs * num_docs]``: shard sequence ids in stream order;
* ``sample_idx`` int64 ``[num_samples + 1, 2]``: row i = (position in ``doc_idx``,
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

Randomness: ``np.random.Generator(np.random.PCG64(seed))`` only, so the same
configuration gives the same order on every machine.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

from megacompress.data.index_cache import load_or_build, open_document_range, shard_digest


@dataclass(frozen=True)
class GPTDatasetConfig:
    """Everything the sample order depends on (all of it goes into the cache key).

    ``num_samples=None`` means one epoch's worth of full samples, unshuffled
    document order is used when ``shuffle=False`` (documents in shard order,
    samples in stream order). ``document_range`` is a half-open range of shard
    sequence ids (``None``: all), used for train/valid/test splits.
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
        lengths = self._doc_lengths()
        start, end = self.document_range
        docs = np.arange(start, end, dtype=np.int64)
        docs = docs[lengths[docs] > 0]
        tokens_per_epoch = int(lengths[docs].sum())
        if tokens_per_epoch < 2:
            raise ValueError(f"{self.prefix}: documents {self.document_range} hold {tokens_per_epoch} tokens; "
                             "need at least 2 for one sample")
        num_samples = cfg.num_samples
        if num_samples is None:
            num_samples = (tokens_per_epoch - 1) // cfg.seq_length
            if num_samples == 0:
                raise ValueError(f"{self.prefix}: one epoch ({tokens_per_epoch} tokens) is shorter than "
                                 f"one sample of seq_length + 1 = {cfg.seq_length + 1} tokens")
        needed = num_samples * cfg.seq_length + 1
        num_epochs = -(-needed // tokens_per_epoch)  # ceil

        rng = np.random.Generator(np.random.PCG64(cfg.seed))
        orders = [rng.permutation(docs) if cfg.shuffle else docs for _ in range(num_epochs)]
        doc_idx = np.concatenate(orders).astype(np.int32)

        # Start token of every document in the stream, then locate each sample start in it.
        doc_starts = np.zeros(len(doc_idx) + 1, dtype=np.int64)
        np.cumsum(lengths[doc_idx], out=doc_starts[1:])
        sample_starts = np.arange(num_samples + 1, dtype=np.int64) * cfg.seq_length
        # side="right" skips nothing here (no empty documents) and maps a start that
        # falls exactly on a document boundary to the later document.
        position = np.searchsorted(doc_starts, sample_starts, side="right") - 1
        sample_idx = np.stack([position, sample_starts - doc_starts[position]], axis=1).astype(np.int64)

        shuffle_idx = rng.permutation(num_samples) if cfg.shuffle else np.arange(num_samples)
        return {"doc_idx": doc_idx, "sample_idx": sample_idx, "shuffle_idx": shuffle_idx.astype(np.int64)}

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
