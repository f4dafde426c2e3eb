"""Equal-Info window rules (numba): where a window ends, its b-bit code, how a decoder stops.

Notation: a window holds symbols ``s_1..s_k`` coded from a fresh coder (and a fresh M1
context); ``L_j`` is ``arithmetic.code_length`` after ``j`` symbols (non-decreasing in j);
the window's code is its shortest code zero-padded to exactly ``b`` bits, ``x``; ``|x|`` is
``x`` without trailing zeros (``= L_k``). ``W`` caps the bytes of a window (the M1 context
the coder allows). Since ``L_1 <= 14`` (every count >= 1), any ``b >= PRECISION + 1`` fits
at least one symbol.

* greedy: ``k_g`` = the largest ``j <= W`` with ``L_j <= b`` (the window grows while the
  code fits). Decoding reads symbols off ``x``; the symbols it reads equal the window's up
  to ``k_g`` but go on past it, and every ``j`` with ``L_j = |x|`` is a candidate end. The
  decoder takes the first candidate ``j`` that is *consistent* with the next window's first
  byte ``u`` (decodable alone: M1's context at a window start is just BOS): appending ``u``
  at ``j`` would overflow ``b`` bits (or ``j = W``). The true end is consistent by
  construction; an earlier consistent candidate makes the window undecodable, which the
  encoder detects (all candidates are prefixes of the real text) and reports. The last
  window of a document ends at the document's byte length.
* delay: ``k = min{j >= 1 : L_j = L_{k_g}}``: the window may not end on bytes that emitted
  no code bits. The decoder stops at the first ``j >= 1`` with ``L_j = |x|``, which is
  exactly ``k``: every window decodes.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from megacompress.methods.equal_info.arithmetic import STATE_SIZE, code_length, encode_symbol, finish, init_state

GREEDY, DELAY = 0, 1
RULES = {"greedy": GREEDY, "delay": DELAY}


@njit(cache=True)
def scan_window(cdfs, symbols, n, at_end, b, cap, rule):
    """Window end over the first ``n`` symbols known so far (``cdfs[i]`` codes ``symbols[i]``).

    ``at_end``: ``symbols[n - 1]`` is the document's last byte. Returns ``(k, undecodable)``,
    or ``(-1, False)`` when the end depends on symbols not known yet.
    """
    st = np.zeros(STATE_SIZE, dtype=np.int64)
    init_state(st)
    none = np.zeros(0, dtype=np.uint8)
    lengths = np.zeros(n + 1, dtype=np.int64)
    kg = -1
    for j in range(n):
        encode_symbol(st, cdfs[j], symbols[j], none)
        length = code_length(st)
        if length > b:
            kg = j
            break
        lengths[j + 1] = length
        if j + 1 == cap:
            kg = cap
            break
    if kg < 0:
        if not at_end:
            return -1, False
        kg = n
    last = at_end and kg == n
    if rule == DELAY:
        k = kg
        while k > 1 and lengths[k - 1] == lengths[kg]:
            k -= 1
        return k, False
    if last:
        return kg, False
    if kg == n:  # ended by the cap: the consistency check needs the next byte
        return -1, False
    # Greedy: would the decoder stop at an earlier candidate j (L_j = L_kg, next byte u overflows)?
    u = symbols[kg]
    init_state(st)
    trial = np.zeros(STATE_SIZE, dtype=np.int64)
    for j in range(1, kg):
        encode_symbol(st, cdfs[j - 1], symbols[j - 1], none)
        if lengths[j] == lengths[kg]:
            trial[:] = st
            encode_symbol(trial, cdfs[j], u, none)
            if code_length(trial) > b:
                return kg, True
    return kg, False


@njit(cache=True)
def window_code(cdfs, symbols, k, b):
    """The b-bit code (uint8 0/1) of ``symbols[:k]``."""
    st = np.zeros(STATE_SIZE, dtype=np.int64)
    init_state(st)
    out = np.zeros(b, dtype=np.uint8)
    for j in range(k):
        encode_symbol(st, cdfs[j], symbols[j], out)
    finish(st, out)
    return out


@njit(cache=True)
def stripped_length(bits):
    """Length of ``bits`` without trailing zeros."""
    for i in range(bits.shape[0] - 1, -1, -1):
        if bits[i]:
            return i + 1
    return 0


@njit(cache=True)
def overflows_with(st, cdf, u, b):
    """Greedy consistency test: would appending byte ``u`` under ``cdf`` overflow ``b`` bits?"""
    trial = st.copy()
    encode_symbol(trial, cdf, u, np.zeros(0, dtype=np.uint8))
    return code_length(trial) > b
