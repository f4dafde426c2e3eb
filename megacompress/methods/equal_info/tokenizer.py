"""The token vocabulary of a bitstream shard, as a ``Tokenizer`` the training engine checks.

Ids ``0 .. v-1`` are the codec's tokens (every value is a real token); the specials follow:
eod = v, eos = v + 1, gist = v + 2, pad = eod, so ``vocab_size = v + 3``. The fingerprint
hashes the codec config and the M1 hash, so a model trained on one bitstream can never be
fed another one's tokens. ``build_tokenizer("bitstream", PATH)`` reads PATH, a bitstream
shard's ``meta.json`` (or the copy an export keeps as ``bitstream.json``); with its M1
loaded (`with_m1`), ``encode`` / ``decode`` run the codec.

``encode(text)`` codes the text as one document: its last window is closed and padded as
at a document's end. ``decode(ids)`` needs the delay rule (its windows decode on their
own, without the byte length): the finished windows are decoded one by one (each
remembered, so text decoded while it grows costs each window once), a trailing partial
window is left out, and a window that is no code of this M1 (possible in sampled text)
decodes to U+FFFD.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from megacompress.methods.equal_info.codec import CodecConfig, CodecError, CorruptStreamError

SPECIAL_OFFSETS = {"eod": 0, "eos": 1, "gist": 2, "pad": 0}


class BitstreamTokenizer:
    name = "bitstream"

    def __init__(self, config: CodecConfig, m1_hash: str | None, m1=None, *, m1_path: str | None = None,
                 model_path: str | None = None):
        self.config, self.m1_hash, self._m1 = config, m1_hash, m1
        self.m1_path, self.model_path = m1_path, model_path  # the recorded M1 path; the file read
        self.vocab_size = config.vocab + 3
        self.eod = config.vocab
        self._windows: dict[tuple[int, ...], bytes] = {}  # decoded windows

    def with_m1(self, m1) -> "BitstreamTokenizer":
        """This tokenizer with ``m1`` (an ``m1.M1``) to encode / decode; refused unless it is the recorded M1."""
        if self.m1_hash is not None and m1.hash != self.m1_hash:
            raise CodecError(f"{m1.directory} is not the M1 of {self.model_path or 'this bitstream'} (hash "
                             f"{m1.hash[:12]}, recorded {self.m1_hash[:12]})")
        return BitstreamTokenizer(self.config, self.m1_hash, m1, m1_path=self.m1_path, model_path=self.model_path)

    @classmethod
    def from_meta_file(cls, path: str, load_m1: bool = False) -> "BitstreamTokenizer":
        """From a bitstream shard's ``meta.json`` (``load_m1``: also load the M1 it names)."""
        try:
            meta = json.loads(Path(path).read_text(encoding="utf-8"))
            config, m1_info = CodecConfig.from_dict(meta["codec"], path), meta.get("m1")
            if m1_info is not None:
                m1_path, m1_hash = m1_info["path"], m1_info["hash"]
                if not isinstance(m1_path, str) or not isinstance(m1_hash, str):
                    raise TypeError(f"m1 {m1_info!r} needs a path and a hash")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CodecError(f"{path}: not a bitstream shard meta.json ({exc})") from None
        tokenizer = cls(config, None if m1_info is None else m1_hash, m1_path=None if m1_info is None else m1_path,
                        model_path=str(path))
        if load_m1 and m1_info is not None:
            from megacompress.methods.equal_info.m1 import M1

            # The path compress_corpus was given (not relative to the meta file); its hash is what is trusted.
            m1 = M1(m1_path)
            if m1.hash != m1_hash:
                raise CodecError(f"{path}: recorded M1 {m1_path} has changed (hash {m1.hash[:12]}, "
                                 f"recorded {m1_hash[:12]})")
            return tokenizer.with_m1(m1)
        return tokenizer

    def special_id(self, name: str) -> int:
        if name not in SPECIAL_OFFSETS:
            raise KeyError(f"unknown special token {name!r}; known: {', '.join(SPECIAL_OFFSETS)}")
        return self.config.vocab + SPECIAL_OFFSETS[name]

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.name.encode())
        h.update(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        h.update((self.m1_hash or "").encode())
        return h.hexdigest()

    def meta(self) -> dict:
        """The ``tokenizer`` section of a shard's meta.json."""
        return {"name": self.name, "fingerprint": self.fingerprint(), "vocab_size": self.vocab_size,
                "special_ids": {k: self.special_id(k) for k in SPECIAL_OFFSETS}}

    def _codec(self):
        from megacompress.methods.equal_info.codec import M1_SCHEMES, build_codec

        if self.config.scheme in M1_SCHEMES and self._m1 is None:
            raise CodecError(f"bitstream tokenizer ({self.config.scheme}) has no M1 loaded to encode/decode text")
        return build_codec(self.config, self._m1)

    def encode(self, text: str) -> list[int]:
        return self._codec().encode([text.encode("utf-8")])[0].tokens.tolist()

    def decode(self, ids: Sequence[int]) -> str:
        """Text of codec tokens (specials dropped; a partial window is left out)."""
        if self.config.scheme != "equal_info" or self.config.rule != "delay":
            raise CodecError("decoding tokens without their byte length needs equal_info with the delay rule")
        per_window = self.config.window_bits // self.config.token_bits
        tokens = [i for i in ids if i < self.config.vocab]
        windows = [tuple(tokens[i:i + per_window]) for i in range(0, len(tokens) - per_window + 1, per_window)]
        new = list(dict.fromkeys(w for w in windows if w not in self._windows))
        if new:
            codec = self._codec()
            try:
                decoded = codec.decode([(np.array(w, np.int64), -1, 1) for w in new])
            except CorruptStreamError:  # find the windows that are no code, one by one
                decoded = [self._decode_one(codec, w) for w in new]
            self._windows.update(zip(new, decoded))
        return b"".join(self._windows[w] for w in windows).decode("utf-8", errors="replace")

    @staticmethod
    def _decode_one(codec, window: tuple[int, ...]) -> bytes:
        try:
            return codec.decode([(np.array(window, np.int64), -1, 1)])[0]
        except CorruptStreamError:
            return "\ufffd".encode()
