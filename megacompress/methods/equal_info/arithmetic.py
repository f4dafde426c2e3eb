"""Exact integer arithmetic coder over 14-bit quantized CDFs (numba hot loops).

A CDF is an int32 array ``cdf[0..256]`` with ``cdf[0] = 0``, ``cdf[256] = TOTAL = 2**14``
and ``cdf[s + 1] - cdf[s] >= 1`` for every byte ``s`` (see ``quantize_counts``).

Coder: Witten-Neal-Cleary with 32-bit ``low``/``high`` (inclusive integer bounds of the
interval ``[low, high + 1) / 2**32`` of the current frame), E1/E2 scalings emitting bits
and E3 (underflow) scalings counted in ``pending``. With range >= 2**30 after
renormalisation and every count >= 1, every sub-interval is non-empty and
``range * cdf`` fits in 46 bits, so all arithmetic is exact in int64.

Code semantics (points, zero padding). A code ``c`` stands for the point ``0.c000...``;
decoding reads the code followed by implicit zeros, so trailing zeros are free. The code
of a symbol string is the *shortest* bit string whose point lies in its final interval:
``prefix + "1"`` (the frame's midpoint, which the renormalised interval always contains),
or the emitted prefix without its trailing zeros when the interval starts at the frame's
origin (``low == 0`` and nothing pending). ``code_length`` gives its length at any point;
it never decreases as symbols are added (nested intervals), which is what the Equal-Info
window rules rely on.

State: an int64 array of ``STATE_SIZE`` fields (indices ``LOW`` ... ``READ``); the decoder
keeps the encoder's fields in step (same interval, same emitted-bit bookkeeping) and adds
the 32-bit value register ``VALUE`` and its read position ``READ`` in the code bits.
Bits are uint8 arrays of 0/1, most significant first.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from megacompress.errors import UserError

PRECISION = 14
TOTAL = 1 << PRECISION
NUM_SYMBOLS = 256
_FULL = (1 << 32) - 1
_HALF = 1 << 31
_Q1 = 1 << 30
_Q3 = 3 << 30

LOW, HIGH, PENDING, NBITS, LAST_ONE, VALUE, READ = range(7)
STATE_SIZE = 7


class CorruptStreamError(UserError, ValueError):
    """A code does not decode to the recorded symbols (truncated, altered or foreign)."""


@njit(cache=True)
def init_state(st):
    """Empty interval state (both sides)."""
    st[LOW] = 0
    st[HIGH] = _FULL
    st[PENDING] = 0
    st[NBITS] = 0
    st[LAST_ONE] = 0
    st[VALUE] = 0
    st[READ] = 0


@njit(cache=True)
def _narrow(st, cdf, s, out, bits, nbits, decoding):
    """Shrink the interval to symbol ``s`` and renormalise (encoder: emit into ``out`` while it
    fits; decoder: also shift the value register in from ``bits``, zeros past ``nbits``)."""
    low = st[LOW]
    r = st[HIGH] - low + 1
    high = low + ((r * np.int64(cdf[s + 1])) >> PRECISION) - 1
    low = low + ((r * np.int64(cdf[s])) >> PRECISION)
    # The state stays in locals through the loop and is stored once: kept in the array, every
    # emitted bit would load and store its fields (the coder's main cost).
    value, pending, n, last_one, read = st[VALUE], st[PENDING], st[NBITS], st[LAST_ONE], st[READ]
    cap = out.shape[0]
    while True:
        if high < _HALF:
            bit = 0
        elif low >= _HALF:
            bit = 1
            low -= _HALF
            high -= _HALF
            value -= _HALF
        elif low >= _Q1 and high < _Q3:
            bit = -1  # E3: the bit is not settled yet, only counted
            pending += 1
            low -= _Q1
            high -= _Q1
            value -= _Q1
        else:
            break
        if bit >= 0:  # one settled bit, then the pending opposite bits
            if n < cap:
                out[n] = bit
            n += 1
            if bit:
                last_one = n
            if pending > 0:
                for i in range(n, min(n + pending, cap)):
                    out[i] = 1 - bit
                n += pending
                if bit == 0:
                    last_one = n
                pending = 0
        low = low << 1
        high = (high << 1) | 1
        if decoding:
            value = (value << 1) | (np.int64(bits[read]) if read < nbits else np.int64(0))
            read += 1
    st[LOW] = low
    st[HIGH] = high
    st[VALUE] = value
    st[PENDING] = pending
    st[NBITS] = n
    st[LAST_ONE] = last_one
    st[READ] = read


@njit(cache=True)
def encode_symbol(st, cdf, s, out):
    """Encode byte ``s`` under ``cdf``; emitted bits go to ``out`` while they fit."""
    _narrow(st, cdf, s, out, out[:0], 0, False)


@njit(cache=True)
def code_length(st):
    """Length of the shortest code of the symbols so far (see the module docstring)."""
    if st[LOW] != 0 or st[PENDING] != 0:
        return st[NBITS] + 1
    return st[LAST_ONE]


@njit(cache=True)
def finish(st, out):
    """Write the terminating ``1`` (if the code needs one) into ``out``; returns the code length."""
    length = code_length(st)
    if (st[LOW] != 0 or st[PENDING] != 0) and st[NBITS] < out.shape[0]:
        out[st[NBITS]] = 1
    return length


@njit(cache=True)
def init_decoder(st, bits, nbits):
    """Start decoding the code ``bits[:nbits]`` (followed by zeros)."""
    init_state(st)
    value = np.int64(0)
    for i in range(32):
        value = (value << 1) | (np.int64(bits[i]) if i < nbits else np.int64(0))
    st[VALUE] = value
    st[READ] = 32


@njit(cache=True)
def peek_symbol(st, cdf):
    """The symbol whose sub-interval holds the value register (state unchanged)."""
    r = st[HIGH] - st[LOW] + 1
    target = ((st[VALUE] - st[LOW] + 1) * TOTAL - 1) // r
    lo, hi = 0, NUM_SYMBOLS  # largest s with cdf[s] <= target
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if cdf[mid] <= target:
            lo = mid
        else:
            hi = mid
    return lo


@njit(cache=True)
def decode_symbol(st, cdf, bits, nbits):
    """Decode one symbol under ``cdf`` and advance (both the interval and the value register)."""
    s = peek_symbol(st, cdf)
    _narrow(st, cdf, s, bits[:0], bits, nbits, True)
    return s


@njit(cache=True)
def encode_stream(cdfs, rows, symbols):
    """Code of ``symbols[i]`` under ``cdfs[rows[i]]`` for all i: (bits uint8 [L], L)."""
    n = symbols.shape[0]
    out = np.zeros(15 * n + 64, dtype=np.uint8)  # each symbol costs < 14.01 bits
    st = np.zeros(STATE_SIZE, dtype=np.int64)
    init_state(st)
    for i in range(n):
        _narrow(st, cdfs[rows[i]], symbols[i], out, out[:0], 0, False)
    length = finish(st, out)
    return out[:length].copy(), length


@njit(cache=True)
def decode_stream(cdfs, rows, bits, n):
    """Inverse of ``encode_stream`` for ``n`` symbols whose CDFs are known up front."""
    st = np.zeros(STATE_SIZE, dtype=np.int64)
    init_decoder(st, bits, bits.shape[0])
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i] = decode_symbol(st, cdfs[rows[i]], bits, bits.shape[0])
    return out


def quantize_counts(weights: np.ndarray) -> np.ndarray:
    """Non-negative weights [..., 256] (probabilities or counts) -> int32 CDFs [..., 257].

    Each symbol gets ``1 + floor(p * (TOTAL - 256))`` counts (p = weight / sum, float64)
    and the rounding remainder goes to the first most probable symbol, so every count is
    >= 1 and the total is exactly ``TOTAL``. A pure function of the input values.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.shape[-1] != NUM_SYMBOLS:
        raise ValueError(f"expected {NUM_SYMBOLS} weights per distribution, got shape {w.shape}")
    flat = w.reshape(-1, NUM_SYMBOLS)
    cdf = np.empty((flat.shape[0], NUM_SYMBOLS + 1), dtype=np.int32)
    _quantize_rows(flat, cdf)
    return cdf.reshape(*w.shape[:-1], NUM_SYMBOLS + 1)


@njit(cache=True)
def quantize_row(p, cdf):
    """One distribution ``p`` [256] (any float dtype, sum ~ 1 or counts) -> ``cdf`` [257]."""
    total = 0.0
    for s in range(NUM_SYMBOLS):
        total += np.float64(p[s])
    spread = TOTAL - NUM_SYMBOLS
    counts = np.empty(NUM_SYMBOLS, dtype=np.int64)
    used = 0
    best = 0
    for s in range(NUM_SYMBOLS):
        c = 1 + np.int64(np.float64(p[s]) / total * spread) if total > 0 else 1
        counts[s] = c
        used += c
        if c > counts[best]:
            best = s
    counts[best] += TOTAL - used
    cdf[0] = 0
    for s in range(NUM_SYMBOLS):
        cdf[s + 1] = cdf[s] + counts[s]


@njit(cache=True)
def _quantize_rows(p, cdf):
    for i in range(p.shape[0]):
        quantize_row(p[i], cdf[i])


def check_cdf(cdf: np.ndarray) -> None:
    """ValueError unless ``cdf`` [..., 257] is a valid quantized CDF."""
    c = np.asarray(cdf)
    if c.shape[-1] != NUM_SYMBOLS + 1 or (c[..., 0] != 0).any() or (c[..., -1] != TOTAL).any():
        raise ValueError(f"CDF must have {NUM_SYMBOLS + 1} entries from 0 to {TOTAL}")
    if (np.diff(c, axis=-1) < 1).any():
        raise ValueError("every symbol needs at least one count")


def bits_to_tokens(bits: np.ndarray, token_bits: int) -> np.ndarray:
    """0/1 bits (length a multiple of ``token_bits``), MSB first -> int64 tokens."""
    b = np.asarray(bits, dtype=np.int64).reshape(-1, token_bits)
    return b @ (1 << np.arange(token_bits - 1, -1, -1, dtype=np.int64))


def tokens_to_bits(tokens: np.ndarray, token_bits: int) -> np.ndarray:
    """Inverse of ``bits_to_tokens``: uint8 0/1 bits, MSB first."""
    t = np.asarray(tokens, dtype=np.int64)[:, None]
    return ((t >> np.arange(token_bits - 1, -1, -1, dtype=np.int64)) & 1).astype(np.uint8).reshape(-1)


def pad_bits(bits: np.ndarray, multiple: int) -> np.ndarray:
    """Zero-pad ``bits`` to a multiple of ``multiple`` (zeros never change a point code)."""
    n = -(-len(bits) // multiple) * multiple
    out = np.zeros(n, dtype=np.uint8)
    out[:len(bits)] = bits
    return out
