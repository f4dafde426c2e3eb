"""Baselines with the codec interface: raw bytes and GZip (raw DEFLATE) chunked into tokens.

Byte strings become tokens big-endian: one byte per token for v256, two per token for
v65k (an odd length gets a zero byte of padding, dropped again using the known length
or the end of the DEFLATE stream).
"""

from __future__ import annotations

import zlib

import numpy as np

from megacompress.methods.equal_info.codec import CodecConfig, CorruptStreamError, EncodedDocument


def bytes_to_tokens(data: bytes, token_bits: int) -> np.ndarray:
    if token_bits == 8:
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    padded = data + b"\0" * (len(data) % 2)
    return np.frombuffer(padded, dtype=">u2").astype(np.int64)


def tokens_to_bytes(tokens: np.ndarray, token_bits: int) -> bytes:
    return np.asarray(tokens).astype(np.uint8 if token_bits == 8 else ">u2").tobytes()


class BytesCodec:
    """The document's bytes as tokens."""

    def __init__(self, config: CodecConfig):
        self.config = config

    def encode(self, docs: list[bytes]) -> list[EncodedDocument]:
        return [EncodedDocument(bytes_to_tokens(d, self.config.token_bits), int(len(d) > 0)) for d in docs]

    def decode(self, items) -> list[bytes]:
        out = []
        for i, (tokens, length, _) in enumerate(items):
            data = tokens_to_bytes(tokens, self.config.token_bits)
            if len(data) - length not in (0, 1 if self.config.token_bits == 16 else 0):
                raise CorruptStreamError(f"document {i}: {len(tokens)} tokens cannot hold {length} bytes")
            out.append(data[:length])
        return out


class GzipCodec:
    """Raw DEFLATE at level 9 (no header, no timestamp: deterministic) of each document."""

    def __init__(self, config: CodecConfig):
        self.config = config

    def encode(self, docs: list[bytes]) -> list[EncodedDocument]:
        out = []
        for d in docs:
            if not d:
                out.append(EncodedDocument(np.zeros(0, np.int64), 0))
                continue
            c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
            out.append(EncodedDocument(bytes_to_tokens(c.compress(d) + c.flush(), self.config.token_bits), 1))
        return out

    def decode(self, items) -> list[bytes]:
        out = []
        for i, (tokens, length, _) in enumerate(items):
            if length == 0:
                out.append(b"")
                continue
            d = zlib.decompressobj(-15)
            try:
                data = d.decompress(tokens_to_bytes(tokens, self.config.token_bits))
            except zlib.error as exc:
                raise CorruptStreamError(f"document {i}: invalid DEFLATE stream ({exc})") from None
            if not d.eof or len(data) != length:
                raise CorruptStreamError(f"document {i}: DEFLATE stream gives {len(data)} bytes, expected {length}"
                                         + ("" if d.eof else " (stream truncated)"))
            out.append(data)
        return out
