"""The integer arithmetic coder: round trips, a pure-Python oracle, constriction, quantization."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from megacompress.methods.equal_info import arithmetic as ac

HALF, QUARTER = 1 << 31, 1 << 30


def oracle_encode(cdfs, symbols) -> list[int]:
    """Plain-Python coder with the module's code semantics (the test oracle)."""
    low, high, pending, bits = 0, (1 << 32) - 1, 0, []
    for cdf, s in zip(cdfs, symbols):
        r = high - low + 1
        low, high = low + (r * int(cdf[s]) >> 14), low + (r * int(cdf[s + 1]) >> 14) - 1
        while True:
            if high < HALF:
                bits += [0] + [1] * pending
                pending = 0
            elif low >= HALF:
                bits += [1] + [0] * pending
                pending, low, high = 0, low - HALF, high - HALF
            elif low >= QUARTER and high < 3 * QUARTER:
                pending, low, high = pending + 1, low - QUARTER, high - QUARTER
            else:
                break
            low, high = 2 * low, 2 * high + 1
    if low == 0 and pending == 0:  # the frame's origin is in the interval: drop trailing zeros
        while bits and bits[-1] == 0:
            bits.pop()
        return bits
    return bits + [1]


def random_cdfs(rng, n, skew):
    logits = rng.normal(size=(n, 256)) * skew
    p = np.exp(logits - logits.max(1, keepdims=True))
    return ac.quantize_counts(p)


distributions = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 300), st.sampled_from([0.5, 3.0, 30.0]))


@settings(max_examples=40, deadline=None)
@given(distributions)
def test_round_trip_and_oracle(args):
    seed, n, skew = args
    rng = np.random.default_rng(seed)
    cdfs = random_cdfs(rng, n, skew)
    # Draw symbols from the distributions, plus some improbable ones.
    p = np.diff(cdfs, axis=1) / ac.TOTAL
    symbols = np.array([rng.choice(256, p=row) if rng.random() < 0.9 else rng.integers(256) for row in p],
                       dtype=np.int64)
    bits, length = ac.encode_stream(cdfs, np.arange(n), symbols)
    assert bits.tolist() == oracle_encode(cdfs, symbols)
    assert ac.decode_stream(cdfs, np.arange(n), bits, n).tolist() == symbols.tolist()
    ideal = -sum(math.log2(p[i, s]) for i, s in enumerate(symbols))
    assert length <= ideal + 2 + 1e-3 * n  # a point code may be shorter than the information content


@settings(max_examples=20, deadline=None)
@given(st.binary(min_size=0, max_size=400), st.integers(0, 255))
def test_extreme_distribution(data, favourite):
    # One symbol holds all but 255 of the 2^14 counts (probability ~0.984).
    counts = np.ones(256)
    counts[favourite] = 1e9
    cdf = ac.quantize_counts(counts)[None]
    assert np.diff(cdf[0]).min() == 1 and cdf[0, -1] == ac.TOTAL
    symbols = np.frombuffer(bytes([favourite]) * 50 + data, np.uint8).astype(np.int64)
    rows = np.zeros(len(symbols), np.int64)
    bits, _ = ac.encode_stream(cdf, rows, symbols)
    assert bits.tolist() == oracle_encode(cdf[rows], symbols)
    assert ac.decode_stream(cdf, rows, bits, len(symbols)).tolist() == symbols.tolist()


def test_code_length_matches_constriction():
    constriction = __import__("constriction")
    rng = np.random.default_rng(0)
    for n in (200, 2000):
        cdfs = random_cdfs(rng, n, 3.0)
        p = np.diff(cdfs, axis=1) / ac.TOTAL
        symbols = np.array([rng.choice(256, p=row) for row in p], dtype=np.int64)
        _, ours = ac.encode_stream(cdfs, np.arange(n), symbols)
        coder = constriction.stream.stack.AnsCoder()
        models = constriction.stream.model.Categorical(perfect=False)
        coder.encode_reverse(symbols.astype(np.int32), models, p)
        # ANS ends with up to one 32-bit word of start-up state; otherwise the lengths agree.
        assert -4 <= coder.num_valid_bits() - ours <= 33, (ours, coder.num_valid_bits())


def test_quantize_is_valid_and_deterministic():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(256, 0.05), size=50).astype(np.float32)
    cdf = ac.quantize_counts(p)
    ac.check_cdf(cdf)
    assert (cdf == ac.quantize_counts(p.copy())).all()
    assert (np.diff(cdf, axis=1) >= 1).all()


def test_tokens_bits_round_trip():
    bits = np.random.default_rng(2).integers(0, 2, 64).astype(np.uint8)
    for width in (8, 16):
        tokens = ac.bits_to_tokens(bits, width)
        assert tokens.max() < 1 << width
        assert (ac.tokens_to_bits(tokens, width) == bits).all()
