"""Tokenizers: GPT-2 BPE (tiktoken, bundled files), SentencePiece, raw bytes.

All three implement the ``Tokenizer`` interface of docs/architecture.md:

* ``encode(text)`` never produces a special id (a literal ``"<|endoftext|>"`` in the
  text is encoded as ordinary text), and ``decode(encode(text)) == text`` for every
  ``str`` that UTF-8 can encode (lone surrogates raise ``ValueError``).
* Special tokens are looked up by role: ``"eod"`` (end of document), ``"eos"``
  (``<|endofsentence|>``, a sentence end: ``preprocess --split-sentences``) and ``"pad"``,
  plus the roles methods register with :func:`register_special`.
* ``fingerprint()`` is the sha256 of the kind, the vocabulary and the special ids:
  equal fingerprints mean equal ids for every text, in any process.

Id layouts: ``eos`` and then the registered specials take the ids after ``eod``, in
registration order. The built-in methods register one special, shown as ``s1`` below; a
plugin method's special comes after it and makes the gpt2 / bytes vocabularies one id
longer, so models trained with it need the plugin loaded (docs/architecture.md, "Tokenizers"):

=============  ===================================  ====  =====  =====  ===========
kind           vocabulary                           eod   eos    s1     vocab_size
=============  ===================================  ====  =====  =====  ===========
gpt2           GPT-2's 50,257 ids                   50256 50257  50258  50259
bytes          byte value b -> id b (0..255)        256   257    258    259
sentencepiece  the model's pieces, then any missing specials appended in the order
               eod, eos, the registered ones (models from :func:`train_sentencepiece` hold all)
hf             a ``tokenizer.json`` (imported models)  its eos_token; the registered
               specials if the vocabulary has them (`HFTokenizer`)
=============  ===================================  ====  =====  =====  ===========

``pad`` is ``eod`` except for a SentencePiece model with its own pad piece (and an hf
tokenizer whose config names a pad token).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Protocol, runtime_checkable

from megacompress import plugins
from megacompress.errors import UserError

CORE_ROLES = ("eod", "pad")
EOD_TEXT = "<|endoftext|>"
EOS_TEXT = "<|endofsentence|>"
TOKENIZER_KINDS = ("gpt2", "sentencepiece", "bytes", "hf")
# Files of an hf tokenizer (Hugging Face names), next to the weights of an imported model.
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


_SPECIALS: dict[str, str] = {"eos": EOS_TEXT}  # role -> text, in id order after eod (the layout)
_KINDS: dict[str, "Callable[[str | None], Tokenizer]"] = {}  # tokenizer kinds that methods add
_RECORD_FILES: dict[str, str] = {}  # method kinds a model directory can record: kind -> file name


def register_special(role: str, text: str) -> None:
    """Add a special token ``text`` looked up as ``special_id(role)`` (once per role)."""
    plugins.load_methods()  # the built-in methods' specials first: ids follow registration order
    if role in CORE_ROLES or _SPECIALS.get(role, text) != text:
        raise ValueError(f"special token role {role!r} is already taken")
    _SPECIALS[role] = text


def special_texts() -> dict[str, str]:
    """The registered specials, role -> text, in id order."""
    plugins.load_methods()
    return dict(_SPECIALS)


def special_names() -> tuple[str, ...]:
    return (*CORE_ROLES[:1], *special_texts(), *CORE_ROLES[1:])


def register_tokenizer_kind(name: str, build: "Callable[[str | None], Tokenizer]", *,
                            record_file: str | None = None) -> None:
    """A tokenizer kind of a method (``build(model_path)``), for ``tokenizer.kind`` in configs.

    ``record_file``: the name under which an export copies the tokenizer's ``model_path`` file
    into a model directory (`save_tokenizer`), so that the model directory carries it; without
    one the kind cannot be recorded."""
    if name in TOKENIZER_KINDS or _KINDS.get(name, build) is not build:
        raise ValueError(f"tokenizer kind {name!r} is already registered")
    _KINDS[name] = build
    if record_file is not None:
        _RECORD_FILES[name] = record_file


@runtime_checkable
class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eod: int

    def encode(self, text: str) -> list[int]: ...

    def encode_continuation(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def special_id(self, name: str) -> int: ...

    def fingerprint(self) -> str: ...


def _role_ids(specials: dict[str, int]) -> dict[str, int]:
    """Text -> id of a fixed layout (eod first, then the registered specials) -> role -> id."""
    texts = {EOD_TEXT: "eod"} | {text: role for role, text in special_texts().items()}
    ids = {texts[text]: i for text, i in specials.items()}
    return ids | {"pad": ids["eod"]}


def encode_pieces(tokenizer: Tokenizer, pieces: Sequence[str]) -> list[list[int]]:
    """Ids of consecutive pieces of one text (sentences): the first encoded as the start of a
    text, the others as its continuation (`Tokenizer.encode_continuation`)."""
    return [tokenizer.encode_continuation(piece) if i else tokenizer.encode(piece) for i, piece in enumerate(pieces)]


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"text is not encodable as UTF-8 (lone surrogate at {e.start})") from e


class _Specials:
    """Shared special-token bookkeeping: role -> id, id -> display text."""

    def _init_specials(self, ids: dict[str, int], texts: dict[int, str]) -> None:
        self._special_ids = dict(ids)
        self._special_texts = dict(texts)
        self.eod = ids["eod"]
        self._fingerprint: str | None = None

    def special_id(self, name: str) -> int:
        if name not in self._special_ids:
            raise KeyError(f"unknown special token {name!r}; known: {', '.join(special_names())}")
        return self._special_ids[name]

    def encode_continuation(self, text: str) -> list[int]:
        """Ids of ``text`` as it continues earlier text (a later piece of a prompt encoded piece by
        piece). Equal to `encode` except for tokenizers that put a "▁" before every text they
        encode (`HFTokenizer` of a SentencePiece-style vocabulary), where a later piece must not
        get one: it would add a space the text does not have."""
        return self.encode(text)

    @property
    def special_ids(self) -> dict[str, int]:
        return dict(self._special_ids)

    def _vocabulary_digest(self, h: "hashlib._Hash") -> None:
        raise NotImplementedError

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(self.name.encode())
            h.update(json.dumps(self._special_ids, sort_keys=True).encode())
            self._vocabulary_digest(h)
            self._fingerprint = h.hexdigest()
        return self._fingerprint


class BytesTokenizer(_Specials):
    """UTF-8 bytes as ids 0..255; eod 256, eos 257, then the registered specials (258, ...); pad = eod."""

    name = "bytes"

    def __init__(self) -> None:
        specials = {EOD_TEXT: 256} | {text: 257 + i for i, text in enumerate(special_texts().values())}
        self.vocab_size = 256 + len(specials)
        self._init_specials(_role_ids(specials), {v: k for k, v in specials.items()})

    def encode(self, text: str) -> list[int]:
        return list(_utf8(text))

    def decode(self, ids: Sequence[int]) -> str:
        out, run = [], bytearray()
        for i in ids:
            i = int(i)
            if i < 256:
                run.append(i)
                continue
            out.append(run.decode("utf-8", errors="replace"))
            run.clear()
            out.append(self._special_texts[i])
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def _vocabulary_digest(self, h) -> None:
        h.update(bytes(range(256)))


class GPT2Tokenizer(_Specials):
    """GPT-2 BPE from the bundled ``encoder.json``/``vocab.bpe``; ids equal GPT-2's."""

    name = "gpt2"

    def __init__(self) -> None:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        from tiktoken_ext.openai_public import r50k_pat_str

        assets = resources.files("megacompress") / "assets" / "gpt2"
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(assets / "vocab.bpe"), encoder_json_file=str(assets / "encoder.json")
        )
        if len(ranks) != 50256:
            raise ValueError(f"{assets}: expected 50,256 mergeable GPT-2 tokens, found {len(ranks)}")
        self._ranks = ranks
        specials = {EOD_TEXT: 50256} | {text: 50257 + i for i, text in enumerate(special_texts().values())}
        self.vocab_size = 50256 + len(specials)
        self._enc = tiktoken.Encoding(
            name="megacompress-gpt2",
            pat_str=r50k_pat_str,
            mergeable_ranks=ranks,
            special_tokens=specials,
        )
        self._init_specials(_role_ids(specials), {v: k for k, v in specials.items()})

    def encode(self, text: str) -> list[int]:
        _utf8(text)  # tiktoken would silently replace lone surrogates
        return self._enc.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode_bytes([int(i) for i in ids]).decode("utf-8", errors="replace")

    def _vocabulary_digest(self, h) -> None:
        for token, rank in sorted(self._ranks.items(), key=lambda kv: kv[1]):
            h.update(rank.to_bytes(4, "little") + len(token).to_bytes(2, "little") + token)


class SentencePieceTokenizer(_Specials):
    """A SentencePiece ``.model``.

    Lossless for models from :func:`train_sentencepiece` (identity normalization,
    byte fallback, no dummy prefix). SentencePiece decodes the meta symbol ``▁``
    (U+2581) as a space, so a literal ``▁`` in the text is encoded by its UTF-8
    byte-fallback pieces instead, which decode back to ``▁``.
    """

    name = "sentencepiece"

    def __init__(self, model_path: str) -> None:
        import sentencepiece as spm

        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"{model_path}: SentencePiece model not found")
        self.model_path = model_path
        try:
            self._sp = spm.SentencePieceProcessor(model_file=model_path)
        except RuntimeError as exc:  # sentencepiece's only error type for an unparsable file
            raise TokenizerFileError(f"{model_path}: not a SentencePiece model ({exc})") from None
        n = self._sp.get_piece_size()
        self._byte_ids = {}
        for b in b"\xe2\x96\x81":  # UTF-8 of U+2581
            piece = f"<0x{b:02X}>"
            pid = self._sp.piece_to_id(piece)
            self._byte_ids[b] = pid if self._sp.id_to_piece(pid) == piece else None

        def find(text: str) -> int | None:
            pid = self._sp.piece_to_id(text)
            return pid if self._sp.id_to_piece(pid) == text and pid != self._sp.unk_id() else None

        extra: dict[int, str] = {}

        def register(text: str, existing: int | None) -> int:
            nonlocal n
            if existing is not None and existing >= 0:
                return existing
            extra[n] = text
            n += 1
            return n - 1

        ids = {"eod": register(EOD_TEXT, self._sp.eos_id() if self._sp.eos_id() >= 0 else find(EOD_TEXT))}
        for role, text in special_texts().items():
            ids[role] = register(text, find(text))
        ids["pad"] = self._sp.pad_id() if self._sp.pad_id() >= 0 else ids["eod"]
        self._sp_size = self._sp.get_piece_size()
        self.vocab_size = n
        texts = {i: self._sp.id_to_piece(i) for role, i in ids.items() if role != "pad" and i < self._sp_size}
        texts.update(extra)
        self._init_specials(ids, texts)

    def encode(self, text: str) -> list[int]:
        _utf8(text)
        if "▁" not in text:
            return self._sp.encode(text, out_type=int)
        if None in self._byte_ids.values():
            raise ValueError(f"{self.model_path}: text contains '▁' but the model has no byte fallback")
        escaped = [self._byte_ids[b] for b in b"\xe2\x96\x81"]
        ids: list[int] = []
        for k, part in enumerate(text.split("▁")):
            if k:
                ids.extend(escaped)
            if part:
                ids.extend(self._sp.encode(part, out_type=int))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        # Specials outside the model are rendered by name; runs of model ids go to sp.
        out, run = [], []
        for i in ids:
            i = int(i)
            if i < self._sp_size and i not in self._special_texts:
                run.append(i)
                continue
            out.append(self._decode_run(run))
            run = []
            out.append(self._special_texts[i])
        out.append(self._decode_run(run))
        return "".join(out)

    def _decode_run(self, run: list[int]) -> str:
        # Decode byte pieces and text pieces separately so that a byte-escaped "▁"
        # is not turned into a space by the decoder's meta-symbol rule.
        if not run:
            return ""
        pieces = [self._sp.id_to_piece(i) for i in run]
        out, buf, raw = [], [], bytearray()
        for pid, piece in zip(run, pieces):
            if self._sp.is_byte(pid):
                if buf:
                    out.append(self._sp.decode(buf))
                    buf = []
                raw.append(int(piece[3:5], 16))
            else:
                if raw:
                    out.append(raw.decode("utf-8", errors="replace"))
                    raw = bytearray()
                buf.append(pid)
        if buf:
            out.append(self._sp.decode(buf))
        if raw:
            out.append(raw.decode("utf-8", errors="replace"))
        return "".join(out)

    def _vocabulary_digest(self, h) -> None:
        h.update(self._sp.serialized_model_proto())


def _without_prefix_space(spec: dict) -> dict | None:
    """A ``tokenizer.json`` spec without the "▁" that SentencePiece-style tokenizers put before
    every text (a ``Prepend`` normalizer, a ``Metaspace`` pre-tokenizer's ``prepend_scheme`` /
    ``add_prefix_space``), or the space of a RoBERTa-style ``ByteLevel`` ``add_prefix_space``;
    None when it puts none."""
    changed = False

    def normalizer(node):
        nonlocal changed
        if not node:
            return node
        if node.get("type") == "Prepend":
            changed = True
            return None
        if node.get("type") == "Sequence":
            return {**node, "normalizers": [n for n in map(normalizer, node["normalizers"]) if n is not None]}
        return node

    def pre_tokenizer(node):
        nonlocal changed
        if not node:
            return node
        if node.get("type") == "Sequence":
            return {**node, "pretokenizers": [pre_tokenizer(n) for n in node["pretokenizers"]]}
        if node.get("type") == "Metaspace" and (node.get("prepend_scheme", "never") != "never"
                                                or node.get("add_prefix_space")):
            changed = True
            return {**node, **({"prepend_scheme": "never"} if "prepend_scheme" in node else {}),
                    **({"add_prefix_space": False} if "add_prefix_space" in node else {})}
        if node.get("type") == "ByteLevel" and node.get("add_prefix_space"):
            changed = True
            return {**node, "add_prefix_space": False}
        return node

    out = {**spec, "normalizer": normalizer(spec.get("normalizer")),
           "pre_tokenizer": pre_tokenizer(spec.get("pre_tokenizer"))}
    return out if changed else None


class HFTokenizer(_Specials):
    """A Hugging Face ``tokenizer.json`` run by the `tokenizers` library (``--tokenizer hf``).

    ``path``: the file, or a directory holding it (an imported model directory). Roles
    come from ``tokenizer_config.json`` beside it (Hugging Face's keys): ``eod`` =
    ``eos_token``, ``bos`` = ``bos_token`` (``add_bos_token``: whether prompts start with
    it, read by the instruction format), ``pad`` = ``pad_token`` or ``eod``; the registered
    specials (`register_special`) only when the vocabulary has them
    (``special_id`` raises ``KeyError`` naming the file otherwise). Special tokens written
    in the text are encoded as text (``encode`` never produces special ids); decoding is
    exact for byte-level BPE vocabularies (GPT-2 / Llama-3 / SmolLM style) and for
    SentencePiece-style ones (Llama-2 / Mistral GGUF imports: the decoder drops the "▁" put
    before the text), except that a literal "▁" (U+2581) in the text decodes as a space.
    """

    name = "hf"

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer as _Backend

        json_path = os.path.join(path, TOKENIZER_JSON) if os.path.isdir(path) else path
        if not os.path.isfile(json_path):
            raise FileNotFoundError(f"{json_path}: tokenizer.json not found")
        self.model_path = json_path
        try:
            self._tok = _Backend.from_file(json_path)
        except Exception as exc:  # the tokenizers library raises a bare Exception for any unreadable file
            raise TokenizerFileError(f"{json_path}: not a Hugging Face tokenizer.json ({exc})") from None
        self._serialized = self._tok.to_str()
        self._tok.encode_special_tokens = True
        continuation = _without_prefix_space(json.loads(self._serialized))
        self._continuation = self._tok if continuation is None else _Backend.from_str(json.dumps(continuation))
        self._continuation.encode_special_tokens = True
        config_path = os.path.join(os.path.dirname(json_path), TOKENIZER_CONFIG)
        config = {}
        if os.path.isfile(config_path):
            try:
                with open(config_path, encoding="utf-8") as f:
                    config = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise TokenizerFileError(f"{config_path}: not valid JSON ({exc})") from None
            if not isinstance(config, dict):
                raise TokenizerFileError(f"{config_path}: not a JSON object")
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.add_bos = bool(config.get("add_bos_token", False))

        def token_text(value, role: str) -> str | None:
            text = value.get("content") if isinstance(value, dict) else value  # str or AddedToken dict
            if text is not None and not isinstance(text, str):
                raise TokenizerFileError(f"{config_path}: {role} {value!r} is not a token")
            return text

        def token_id(value, role: str) -> int | None:
            text = token_text(value, role)
            if text is None:
                return None
            tid = self._tok.token_to_id(text)
            if tid is None:
                raise TokenizerFileError(f"{config_path}: {role} {text!r} is not in the vocabulary of {json_path}")
            return tid

        eod = token_id(config.get("eos_token"), "eos_token")
        if eod is None:
            raise TokenizerFileError(f"{config_path}: no eos_token (the end-of-document role) for {json_path}")
        pad = token_id(config.get("pad_token"), "pad_token")
        ids = {"eod": eod, "pad": eod if pad is None else pad}
        for role, text in (("bos", token_text(config.get("bos_token"), "bos_token")), *special_texts().items()):
            tid = self._tok.token_to_id(text) if text else None
            if tid is not None:
                ids[role] = tid
        self.bos = ids.get("bos")
        self._init_specials(ids, {i: self._tok.id_to_token(i) for i in ids.values()})

    def special_id(self, name: str) -> int:
        if name not in self._special_ids and name in (*special_names(), "bos"):
            raise KeyError(f"{self.model_path}: the vocabulary has no {name!r} token")
        return super().special_id(name)

    def encode(self, text: str) -> list[int]:
        _utf8(text)
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_continuation(self, text: str) -> list[int]:
        _utf8(text)
        return self._continuation.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def _vocabulary_digest(self, h) -> None:
        h.update(self._serialized.encode())


class TokenizerMismatch(UserError, ValueError):
    """A tokenizer that is not the one a model or shard was made with."""


class TokenizerFileError(UserError, ValueError):
    """A tokenizer file (SentencePiece model, tokenizer.json, tokenizer_config.json) that cannot be
    read; the message names the file."""


# A model directory's record of the tokenizer it was trained with (written by checkpoint
# export): {"kind", "fingerprint", "vocab_size", "model_file"}; the SentencePiece model or
# Hugging Face tokenizer.json itself is copied beside it.
TOKENIZER_RECORD = "tokenizer_info.json"
SENTENCEPIECE_FILE = "tokenizer.model"
RECORDED_KINDS = ("gpt2", "bytes", "sentencepiece", "hf")  # and the method kinds with a record file


def _recorded_kinds() -> dict[str, str | None]:
    """Every kind a model directory can record -> the file it holds for it (None: needs none);
    the methods' kinds included (loaded first: a record may be read before anything else loads them)."""
    plugins.load_methods()
    return {**dict.fromkeys(RECORDED_KINDS), "sentencepiece": SENTENCEPIECE_FILE, "hf": TOKENIZER_JSON,
            **_RECORD_FILES}


def save_tokenizer(tokenizer: Tokenizer, model_dir: str) -> None:
    """Record ``tokenizer`` in a model directory (atomic writes; its model file copied in). The
    caller seals the directory again afterwards (`megacompress.models.pretrained.seal`)."""
    import shutil

    from megacompress.atomic import atomic_write, write_text_atomic

    kinds = _recorded_kinds()
    if tokenizer.name not in kinds:
        raise ValueError(f"a {tokenizer.name} tokenizer cannot be recorded in a model directory")
    model_file = kinds[tokenizer.name]
    if model_file is not None:
        sources = [(tokenizer.model_path, model_file)]
        config = os.path.join(os.path.dirname(tokenizer.model_path), TOKENIZER_CONFIG)
        if tokenizer.name == "hf" and os.path.isfile(config):
            sources.append((config, TOKENIZER_CONFIG))
        for source, name in sources:
            target = os.path.join(model_dir, name)
            if os.path.abspath(source) != os.path.abspath(target):
                atomic_write(target, lambda tmp, source=source: shutil.copyfile(source, tmp))
    record = {"kind": tokenizer.name, "fingerprint": tokenizer.fingerprint(), "vocab_size": tokenizer.vocab_size,
              "model_file": model_file}
    write_text_atomic(os.path.join(model_dir, TOKENIZER_RECORD), json.dumps(record, indent=2) + "\n")


def read_tokenizer_record(model_dir: str) -> dict | None:
    """A model directory's `TOKENIZER_RECORD`, checked, with ``model_file`` resolved inside the
    directory (the record may come from someone else); None when there is none."""
    from megacompress.integrity import IntegrityError, resolve_inside

    path = os.path.join(model_dir, TOKENIZER_RECORD)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path}: not valid JSON ({exc})") from None
    kinds = _recorded_kinds()
    if (not isinstance(record, dict) or not isinstance(record.get("kind"), str) or record["kind"] not in kinds
            or not isinstance(record.get("fingerprint"), str)):
        raise IntegrityError(f"{path}: not a tokenizer record (needs \"kind\" one of {', '.join(kinds)} and a "
                             "\"fingerprint\" string)")
    model_file = record.get("model_file")
    if model_file is not None:
        record["model_file"] = str(resolve_inside(model_dir, model_file, source=path))
    elif kinds[record["kind"]] is not None:
        raise IntegrityError(f"{path}: a {record['kind']} tokenizer record names no model_file")
    return record


def model_tokenizer(model_dir: str) -> Tokenizer:
    """The tokenizer a model directory carries: its `TOKENIZER_RECORD` (an exported training
    run), else its ``tokenizer.json`` (an imported model), else GPT-2 with a warning."""
    record = read_tokenizer_record(model_dir)
    if record is not None:
        tokenizer = build_tokenizer(record["kind"], record["model_file"])
        if tokenizer.fingerprint() != record["fingerprint"]:
            raise TokenizerMismatch(f"{os.path.join(model_dir, TOKENIZER_RECORD)}: the tokenizer files beside it do "
                                    "not match the recorded fingerprint")
        return tokenizer
    if os.path.isfile(os.path.join(model_dir, TOKENIZER_JSON)):
        return HFTokenizer(model_dir)
    import warnings

    warnings.warn(f"{model_dir} records no tokenizer ({TOKENIZER_RECORD}); assuming gpt2")
    return GPT2Tokenizer()


def check_model_tokenizer(model_dir: str, tokenizer: Tokenizer) -> None:
    """Refuse a tokenizer other than the one ``model_dir`` records (garbage text otherwise)."""
    record = read_tokenizer_record(model_dir)
    if record is not None and record["fingerprint"] != tokenizer.fingerprint():
        raise TokenizerMismatch(f"--tokenizer {tokenizer.name} (fingerprint {tokenizer.fingerprint()[:12]}) is not the "
                         f"tokenizer {model_dir} was trained with ({record['kind']}, fingerprint "
                         f"{record['fingerprint'][:12]}, {os.path.join(model_dir, TOKENIZER_RECORD)}); leave "
                         "--tokenizer out to use it")


def train_sentencepiece(
    input_files: Sequence[str],
    model_prefix: str,
    vocab_size: int,
    model_type: str = "bpe",
    input_sentence_size: int = 2_000_000,
) -> str:
    """Train a lossless SentencePiece model on plain-text files; returns ``MODEL_PREFIX.model``.

    Lossless setup: identity normalization, whitespace kept as is, no dummy prefix,
    byte fallback (no unknown pieces), digits split. ``<|endoftext|>`` is the eos
    piece (role ``eod``); the registered specials are control symbols
    (never produced by ``encode``). Deterministic for the same inputs.
    """
    import sentencepiece as spm

    for path in input_files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: SentencePiece training file not found")
    os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=list(input_files),
        model_prefix=model_prefix,
        vocab_size=vocab_size,
        model_type=model_type,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        max_sentence_length=1 << 20,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=False,
        character_coverage=0.9995,
        unk_id=0,
        bos_id=-1,
        eos_id=1,
        pad_id=-1,
        eos_piece=EOD_TEXT,
        control_symbols=list(special_texts().values()),
        num_threads=1,
        minloglevel=2,
    )
    return model_prefix + ".model"


def build_tokenizer(kind: str, model_path: str | None = None) -> Tokenizer:
    """``kind`` in ``gpt2 | sentencepiece | bytes | hf``; ``model_path`` for sentencepiece (.model)
    and hf (tokenizer.json or its directory)."""
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "bytes":
        return BytesTokenizer()
    if kind == "sentencepiece":
        if model_path is None:
            raise TokenizerFileError("the sentencepiece tokenizer needs a model path (--tokenizer-model)")
        return SentencePieceTokenizer(model_path)
    if kind == "hf":
        if model_path is None:
            raise TokenizerFileError("the hf tokenizer needs a tokenizer.json path or model directory (--tokenizer-model)")
        return HFTokenizer(model_path)
    build = plugins.lookup(_KINDS, kind)
    if build is not None:
        return build(model_path)
    raise TokenizerFileError(f"unknown tokenizer {kind!r}; choose one of {', '.join([*TOKENIZER_KINDS, *_KINDS])}")
