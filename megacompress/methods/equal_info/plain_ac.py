"""Whole-document arithmetic coding: under M1 (``ac``) or a static unigram model (``static_ac``).

The code of a document is its shortest arithmetic code (``arithmetic.encode_stream``)
zero-padded to whole tokens; decoding runs exactly ``byte_length`` symbols. M1's context
restarts every ``context`` bytes (byte ``i`` is predicted at position ``i % context`` of
its block, position 0 holding BOS), so a long document needs no context beyond M1's.
"""

from __future__ import annotations

import numpy as np

from megacompress.methods.equal_info import arithmetic as ac
from megacompress.methods.equal_info.codec import CodecConfig, CorruptStreamError, EncodedDocument
from megacompress.methods.equal_info.m1 import BOS, M1

ROWS = 16  # M1 contexts evaluated per call


def teacher_forced_cdfs(m1: M1, docs: list[bytes], context: int, rows: int = ROWS) -> list[np.ndarray]:
    """CDFs [len(doc), 257] of every byte of every document, M1's context cut every ``context`` bytes."""
    blocks = [(d, s) for d, doc in enumerate(docs) for s in range(0, len(doc), context)]
    out = [np.empty((len(doc), ac.NUM_SYMBOLS + 1), np.int32) for doc in docs]
    cache = m1.new_cache(rows, context)
    for first in range(0, len(blocks), rows):
        group = blocks[first:first + rows]
        row_ids, positions, tokens = [], [], []
        for r, (d, s) in enumerate(group):
            piece = docs[d][s:s + context]
            row_ids.append(np.full(len(piece), r))
            positions.append(np.arange(len(piece)))
            tokens.append(np.concatenate([[BOS], np.frombuffer(piece[:-1], np.uint8)]))
        cdfs = m1.cdfs(cache, np.concatenate(row_ids), np.concatenate(positions), np.concatenate(tokens))
        at = 0
        for d, s in group:
            n = min(context, len(docs[d]) - s)
            out[d][s:s + n] = cdfs[at:at + n]
            at += n
    return out


def _tokens(bits: np.ndarray, token_bits: int) -> np.ndarray:
    return ac.bits_to_tokens(ac.pad_bits(bits, token_bits), token_bits)


def _check_tokens(i: int, tokens: np.ndarray, length: int, windows: int) -> None:
    if windows != int(length > 0):
        raise CorruptStreamError(f"document {i}: {windows} windows recorded for a whole-document code")


class StaticArithmeticCodec:
    """AC under one fixed CDF: the corpus' byte frequencies (``config.static_counts``)."""

    def __init__(self, config: CodecConfig):
        self.config = config
        self.cdf = ac.quantize_counts(np.asarray(config.static_counts, np.float64))[None]

    def encode(self, docs: list[bytes]) -> list[EncodedDocument]:
        out = []
        for d in docs:
            symbols = np.frombuffer(d, np.uint8).astype(np.int64)
            bits, _ = ac.encode_stream(self.cdf, np.zeros(len(d), np.int64), symbols)
            out.append(EncodedDocument(_tokens(bits, self.config.token_bits), int(len(d) > 0)))
        return out

    def decode(self, items) -> list[bytes]:
        out = []
        for i, (tokens, length, windows) in enumerate(items):
            _check_tokens(i, tokens, length, windows)
            bits = ac.tokens_to_bits(tokens, self.config.token_bits)
            out.append(ac.decode_stream(self.cdf, np.zeros(length, np.int64), bits, length).astype(np.uint8).tobytes())
        return out


class M1ArithmeticCodec:
    """AC of the whole document under M1 (the paper's plain ``AC``)."""

    def __init__(self, m1: M1, config: CodecConfig):
        self.m1, self.config = m1, config
        self.context = min(m1.max_context, 1024)

    def encode(self, docs: list[bytes]) -> list[EncodedDocument]:
        out = []
        for d, cdfs in zip(docs, teacher_forced_cdfs(self.m1, docs, self.context)):
            symbols = np.frombuffer(d, np.uint8).astype(np.int64)
            bits, _ = ac.encode_stream(cdfs, np.arange(len(d)), symbols)
            out.append(EncodedDocument(_tokens(bits, self.config.token_bits), int(len(d) > 0)))
        return out

    def decode(self, items) -> list[bytes]:
        """All documents advance one byte per M1 call (one cache row each)."""
        items = list(items)
        results: list[bytes | None] = [None] * len(items)
        pending = []
        for i, (tokens, length, windows) in enumerate(items):
            _check_tokens(i, tokens, length, windows)
            pending.append(i)
        for first in range(0, len(pending), ROWS):
            group = pending[first:first + ROWS]
            cache = self.m1.new_cache(len(group), self.context)
            bits = [ac.tokens_to_bits(items[i][0], self.config.token_bits) for i in group]
            lengths = [items[i][1] for i in group]
            states = [np.zeros(ac.STATE_SIZE, np.int64) for _ in group]
            for st, b in zip(states, bits):
                ac.init_decoder(st, b, len(b))
            decoded = [np.empty(n, np.int64) for n in lengths]
            for pos in range(max(lengths, default=0)):
                active = [r for r, n in enumerate(lengths) if pos < n]
                q = pos % self.context
                toks = [BOS if q == 0 else decoded[r][pos - 1] for r in active]
                cdfs = self.m1.cdfs(cache, np.array(active), np.full(len(active), q), np.array(toks))
                for c, r in enumerate(active):
                    decoded[r][pos] = ac.decode_symbol(states[r], cdfs[c], bits[r], len(bits[r]))
            for r, i in enumerate(group):
                results[i] = decoded[r].astype(np.uint8).tobytes()
        return results
