"""EqualInfoAC windows: delay round trips, greedy reporting, batch-independent tokens."""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from workers.equal_info_m1 import save_tiny_m1

from megacompress.methods.equal_info.codec import CodecConfig, CorruptStreamError, build_codec
from megacompress.methods.equal_info.m1 import M1

VALID = Path(__file__).resolve().parents[1] / "data" / "sample" / "valid.jsonl"
PREFIX_BYTES = 1500  # of each validation document: keeps the test at a few seconds


@pytest.fixture(scope="module")
def m1(tmp_path_factory):
    return M1(save_tiny_m1(tmp_path_factory.mktemp("m1")))


def validation_documents(prefix_bytes=PREFIX_BYTES):
    return [json.loads(line)["text"].encode()[:prefix_bytes] for line in VALID.open()]


def round_trip(codec, docs):
    encoded = codec.encode(docs)
    return encoded, codec.decode([(e.tokens, len(d), e.windows) for e, d in zip(encoded, docs)])


def test_delay_round_trips_every_validation_document(m1):
    docs = validation_documents()
    codec = build_codec(CodecConfig("equal_info", vocab=65536, window_bits=16, rule="delay"), m1)
    encoded, decoded = round_trip(codec, docs)
    assert decoded == docs
    for e in encoded:
        assert e.undecodable_windows == 0 and len(e.tokens) == e.windows  # b16, v65k: a token is a window
        assert e.tokens.max() < 65536


@settings(max_examples=25, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([(16, 65536), (16, 256), (32, 65536), (24, 256)]))
def test_delay_round_trips_random_bytes(m1, data, shape):
    bits, vocab = shape
    codec = build_codec(CodecConfig("equal_info", vocab=vocab, window_bits=bits, rule="delay",
                                    max_window_bytes=40), m1)
    encoded, decoded = round_trip(codec, [data, data * 3])
    assert decoded == [data, data * 3]
    assert len(encoded[0].tokens) == encoded[0].windows * bits // (8 if vocab == 256 else 16)


def test_greedy_reports_windows_that_do_not_decode(m1):
    docs = validation_documents(300)  # short: about half of them hold a flagged window
    codec = build_codec(CodecConfig("equal_info", vocab=65536, window_bits=16, rule="greedy"), m1)
    encoded = codec.encode(docs)
    flagged = [e.undecodable_windows > 0 for e in encoded]
    assert any(flagged) and not all(flagged)
    for e, d, bad in zip(encoded, docs, flagged):
        try:
            (text,) = codec.decode([(e.tokens, len(d), e.windows)])
        except CorruptStreamError:
            text = None
        assert (text == d) == (not bad)


def test_tokens_do_not_depend_on_batching(m1):
    docs = validation_documents()[:6] + [b"", b"x"]
    config = CodecConfig("equal_info", vocab=256, window_bits=16, rule="delay")
    alone = [build_codec(config, m1).encode([d])[0].tokens for d in docs]
    codec = build_codec(config, m1)
    codec.rows = 3
    batched = codec.encode(docs)
    assert all(np.array_equal(a, b.tokens) for a, b in zip(alone, batched))


def test_truncated_stream_names_the_document(m1):
    docs = validation_documents()[:2]
    codec = build_codec(CodecConfig("equal_info", vocab=65536, window_bits=16, rule="delay"), m1)
    encoded = codec.encode(docs)
    with pytest.raises(CorruptStreamError, match="document 1"):
        codec.decode([(encoded[0].tokens, len(docs[0]), encoded[0].windows),
                      (encoded[1].tokens[:-3], len(docs[1]), encoded[1].windows - 3)])
