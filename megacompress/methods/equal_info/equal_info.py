"""EqualInfoAC[b, v]: documents as windows of exactly b code bits under M1 (docs/equal_info.md, "Window rules").

Every window restarts M1's context (BOS at position 0) and the coder; its code is padded
to ``b`` bits and cut into ``b / log2(v)`` tokens, so with b = 16, v = 65536 a token is a
window. Where windows end is decided by ``windows.scan_window`` (greedy or delay rule) and
decoding stops by the mirror rules (module docstring of ``windows``).

Batching: up to ``rows`` documents are in flight, each in its own M1 cache row; a call to
``M1.cdfs`` carries every row's next chunk of bytes (encoder: teacher-forced, ~1.25 x the
mean window length; decoder: one byte per row). Because M1's CDFs depend only on the
window's own bytes (``m1`` docstring), the tokens of a document are the same for any
batch, chunk size or worker count.
"""

from __future__ import annotations

import numpy as np

from megacompress.methods.equal_info import arithmetic as ac
from megacompress.methods.equal_info import windows as wr
from megacompress.methods.equal_info.codec import CodecConfig, CorruptStreamError, EncodedDocument
from megacompress.methods.equal_info.m1 import BOS, M1


class _EncodeRow:
    def __init__(self, doc: int, data: bytes, cap: int):
        self.doc = doc
        self.data = np.frombuffer(data, np.uint8).astype(np.int64)
        self.start = 0  # first byte of the open window
        self.have = 0  # CDFs known for the open window
        self.cdfs = np.empty((cap + 1, ac.NUM_SYMBOLS + 1), np.int32)
        self.codes: list[np.ndarray] = []
        self.undecodable = 0


class EqualInfoCodec:
    """Encode / decode documents with EqualInfoAC (``config.window_bits``, ``vocab``, ``rule``)."""

    def __init__(self, m1: M1, config: CodecConfig, rows: int = 32):
        self.m1, self.config, self.rows = m1, config, rows
        self.b = config.window_bits
        self.cap = min(config.max_window_bytes, m1.max_context - 1)
        self.rule = wr.RULES[config.rule]
        self._mean_window = self.b / 2.0  # running mean of window bytes: sizes the encoder's chunks
        self._windows_seen = 0

    # ------------------------------------------------------------------ encode
    def encode(self, docs: list[bytes]) -> list[EncodedDocument]:
        results: list[EncodedDocument | None] = [None] * len(docs)
        todo = iter(range(len(docs)))
        slots: list[_EncodeRow | None] = [None] * self.rows
        cache = self.m1.new_cache(self.rows, self.cap + 1)
        exhausted = False
        while True:
            for r in range(self.rows):
                while slots[r] is None and not exhausted:
                    d = next(todo, None)
                    if d is None:
                        exhausted = True
                    elif not docs[d]:
                        results[d] = EncodedDocument(np.zeros(0, np.int64), 0)
                    else:
                        slots[r] = _EncodeRow(d, docs[d], self.cap)
            active = [r for r in range(self.rows) if slots[r] is not None]
            if not active:
                break
            chunk = max(4, int(1.25 * self._mean_window) + 2)
            row_ids, positions, tokens, counts = [], [], [], []
            for r in active:
                row = slots[r]
                n = min(chunk, len(row.data) - row.start - row.have, self.cap + 1 - row.have)
                pos = np.arange(row.have, row.have + n)
                window = row.data[row.start:]
                tokens.append(np.where(pos == 0, BOS, window[np.maximum(pos - 1, 0)]))
                row_ids.append(np.full(n, r))
                positions.append(pos)
                counts.append(n)
            cdfs = self.m1.cdfs(cache, np.concatenate(row_ids), np.concatenate(positions), np.concatenate(tokens))
            at = 0
            for r, n in zip(active, counts):
                row = slots[r]
                row.cdfs[row.have:row.have + n] = cdfs[at:at + n]
                at += n
                row.have += n
                if self._advance(row):
                    results[row.doc] = self._finish(row)
                    slots[r] = None
        return results

    def _advance(self, row: _EncodeRow) -> bool:
        """Close the open window if its end is known; True when the document is done."""
        symbols = row.data[row.start:row.start + row.have]
        at_end = row.start + row.have == len(row.data)
        k, undecodable = wr.scan_window(row.cdfs, symbols, row.have, at_end, self.b, self.cap, self.rule)
        if k < 0:
            return False
        row.codes.append(wr.window_code(row.cdfs, symbols, k, self.b))
        row.undecodable += int(undecodable)
        row.start += k
        row.have = 0
        self._windows_seen += 1
        self._mean_window += (k - self._mean_window) / min(self._windows_seen, 1000)
        return row.start == len(row.data)

    def _finish(self, row: _EncodeRow) -> EncodedDocument:
        tokens = ac.bits_to_tokens(np.concatenate(row.codes), self.config.token_bits)
        return EncodedDocument(tokens, len(row.codes), row.undecodable)

    # ------------------------------------------------------------------ decode
    def decode(self, items) -> list[bytes]:
        """``items``: (tokens, byte_length, windows) per document; byte_length -1 = unknown
        (delay rule only: its windows end without knowing where the document does)."""
        items = list(items)
        per_window = self.b // self.config.token_bits
        jobs = []
        for i, (tokens, length, windows) in enumerate(items):
            if len(tokens) != windows * per_window or (length >= 0 and (windows == 0) != (length == 0)):
                raise CorruptStreamError(f"document {i}: {len(tokens)} tokens, {windows} windows and {length} "
                                         f"bytes do not fit {self.b}-bit windows of {per_window} tokens")
            bits = ac.tokens_to_bits(np.asarray(tokens), self.config.token_bits).reshape(windows, self.b)
            jobs.append((i, bits, int(length)))
        first_cdf = self._first_cdf()
        results: list[bytes | None] = [None] * len(items)
        for start in range(0, len(jobs), self.rows):
            group = jobs[start:start + self.rows]
            for (i, _, _), data in zip(group, _WindowDecoder(self, group, first_cdf).run()):
                results[i] = data
        return results

    def _first_cdf(self) -> np.ndarray:
        """CDF at a window's first byte (context = BOS only): decodes a next window's first byte."""
        return self.m1.cdfs(self.m1.new_cache(1, 1), np.zeros(1), np.zeros(1), np.array([BOS]))[0]


class _WindowDecoder:
    """Decodes one group of documents in lockstep, one byte per row per M1 call."""

    def __init__(self, codec: EqualInfoCodec, group, first_cdf: np.ndarray):
        self.c = codec
        self.group = group
        self.first_cdf = first_cdf
        self.cache = codec.m1.new_cache(len(group), codec.cap + 1)
        n = len(group)
        self.window = [0] * n  # index of the open window
        self.j = [0] * n  # bytes decoded in the open window
        self.out = [bytearray() for _ in range(n)]
        self.states = [np.zeros(ac.STATE_SIZE, np.int64) for _ in range(n)]
        self.target = [0] * n  # |x| of the open window
        self.next_first = [-1] * n  # greedy: first byte of the next window
        self.done = [len(bits) == 0 for _, bits, _ in group]
        for r in range(n):
            if not self.done[r]:
                self._open(r)

    def _fail(self, r: int, why: str):
        i, _, length = self.group[r]
        return CorruptStreamError(f"document {i}: window {self.window[r]} (byte {len(self.out[r])} of {length}): "
                                  f"{why}")

    def _open(self, r: int) -> None:
        _, bits, _ = self.group[r]
        w = self.window[r]
        ac.init_decoder(self.states[r], bits[w], self.c.b)
        self.target[r] = wr.stripped_length(bits[w])
        self.j[r] = 0
        if self.c.rule == wr.GREEDY and w + 1 < len(bits):
            st = np.zeros(ac.STATE_SIZE, np.int64)
            ac.init_decoder(st, bits[w + 1], self.c.b)
            self.next_first[r] = ac.peek_symbol(st, self.first_cdf)

    def _close(self, r: int) -> None:
        _, bits, length = self.group[r]
        self.window[r] += 1
        if self.window[r] == len(bits):
            if length >= 0 and len(self.out[r]) != length:
                raise self._fail(r, f"the windows end after {len(self.out[r])} bytes, expected {length}")
            self.done[r] = True
        else:
            self._open(r)

    def _ends_here(self, r: int, cdf: np.ndarray | None) -> bool:
        """Whether the open window ends after its ``j`` bytes (``cdf``: of the next byte; greedy only)."""
        _, bits, length = self.group[r]
        st, j = self.states[r], self.j[r]
        if j == 0 or ac.code_length(st) != self.target[r]:
            return False
        if self.c.rule == wr.DELAY:
            return True
        if self.window[r] == len(bits) - 1:
            return len(self.out[r]) == length
        return j == self.c.cap or wr.overflows_with(st, cdf, self.next_first[r], self.c.b)

    def run(self) -> list[bytes]:
        greedy = self.c.rule == wr.GREEDY
        while True:
            for r in range(len(self.group)):  # delay windows close without another M1 call
                while not greedy and not self.done[r] and self._ends_here(r, None):
                    self._close(r)
            active = [r for r in range(len(self.group)) if not self.done[r]]
            if not active:
                return [bytes(o) for o in self.out]
            toks = [BOS if self.j[r] == 0 else self.out[r][-1] for r in active]
            cdfs = self.c.m1.cdfs(self.cache, np.array(active), np.array([self.j[r] for r in active]),
                                  np.array(toks))
            for c, r in enumerate(active):
                if greedy and self._ends_here(r, cdfs[c]):
                    self._close(r)
                    continue
                self._step(r, cdfs[c])

    def _step(self, r: int, cdf: np.ndarray) -> None:
        _, bits, length = self.group[r]
        st = self.states[r]
        if self.j[r] >= self.c.cap or 0 <= length <= len(self.out[r]):
            raise self._fail(r, "no window end found within the window or document length")
        self.out[r].append(ac.decode_symbol(st, cdf, bits[self.window[r]], self.c.b))
        self.j[r] += 1
        if ac.code_length(st) > self.target[r]:
            raise self._fail(r, "the code does not decode to a window of this M1")
