"""The token interface every compression scheme shares, and the scheme factory.

A codec turns a document (bytes) into tokens of ``log2(vocab)`` bits, ids in
``[0, vocab)`` (every id is a real token: end-of-document and other specials live outside
them, see ``tokenizer.BitstreamTokenizer``), and back. ``windows`` is the number of
independently coded pieces (Equal-Info windows; 1 for a whole-document code; 0 for an
empty document). Decoding is given the document's byte length and window count (stored
beside the tokens) and raises ``CorruptStreamError`` naming the document index when the
tokens cannot be the code of such a document.

Schemes: ``equal_info`` (EqualInfoAC[b, v], rule ``greedy`` or ``delay``), ``ac`` (M1 over
the whole document), ``static_ac`` (a unigram byte model from the corpus), ``gzip`` (raw
DEFLATE), ``bytes`` (the UTF-8 bytes themselves).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from megacompress.errors import UserError
from megacompress.methods.equal_info.arithmetic import PRECISION, CorruptStreamError  # noqa: F401 (re-exported)


class CodecError(UserError, ValueError):
    """A codec setting, M1 or bitstream shard that cannot be used; the message names which."""

SCHEMES = ("equal_info", "ac", "static_ac", "gzip", "bytes")
M1_SCHEMES = ("equal_info", "ac")


@dataclass(frozen=True)
class CodecConfig:
    """What a shard's tokens mean. ``window_bits`` and ``rule`` only matter for ``equal_info``;
    ``max_window_bytes`` caps a window (and is M1's context for ``ac``); ``static_counts``:
    the unigram byte counts of ``static_ac``."""

    scheme: str
    vocab: int = 65536
    window_bits: int = 16
    rule: str = "delay"
    max_window_bytes: int = 256
    static_counts: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise CodecError(f"unknown scheme {self.scheme!r}; choose one of {', '.join(SCHEMES)}")
        if self.vocab not in (256, 65536):
            raise CodecError(f"vocab must be 256 or 65536 (8- or 16-bit tokens), got {self.vocab}")
        if self.scheme == "equal_info":
            if self.window_bits < PRECISION + 1 or self.window_bits % self.token_bits:
                raise CodecError(f"window_bits {self.window_bits} must be >= {PRECISION + 1} and a multiple of "
                                 f"the {self.token_bits}-bit token size")
            if self.rule not in ("greedy", "delay"):
                raise CodecError(f"rule must be greedy or delay, got {self.rule!r}")
        if self.scheme == "static_ac" and len(self.static_counts) != 256:
            raise CodecError("static_ac needs 256 static_counts (byte frequencies of the corpus)")

    @property
    def token_bits(self) -> int:
        return 8 if self.vocab == 256 else 16

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.vocab == 256 else np.uint16)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["static_counts"] = list(self.static_counts)
        return out

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "CodecConfig":
        """The ``codec`` section of ``source`` (a shard's meta.json, maybe from elsewhere); a
        malformed one is a ``ValueError`` naming ``source``."""
        try:
            return cls(**{**d, "static_counts": tuple(d.get("static_counts", ()))})
        except (TypeError, AttributeError, ValueError) as exc:
            raise CodecError(f"{source}: unusable codec section ({exc})") from None


@dataclass
class EncodedDocument:
    """Tokens of one document; ``undecodable_windows`` > 0 only for greedy windows that the
    decoder's look-ahead would end too early."""

    tokens: np.ndarray
    windows: int
    undecodable_windows: int = 0


def build_codec(config: CodecConfig, m1=None):
    """The codec object of ``config`` (``m1``: an ``m1.M1`` for the M1 schemes)."""
    from megacompress.methods.equal_info import baselines, equal_info, plain_ac

    if config.scheme in M1_SCHEMES and m1 is None:
        raise CodecError(f"scheme {config.scheme} needs an M1 model (--m1)")
    if config.scheme == "equal_info":
        return equal_info.EqualInfoCodec(m1, config)
    if config.scheme == "ac":
        return plain_ac.M1ArithmeticCodec(m1, config)
    if config.scheme == "static_ac":
        return plain_ac.StaticArithmeticCodec(config)
    if config.scheme == "gzip":
        return baselines.GzipCodec(config)
    return baselines.BytesCodec(config)
