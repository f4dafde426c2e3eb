"""Deterministic, lossless sentence splitting (NLTK Punkt, trained on the corpus itself).

``SentenceSplitter.split(text)`` returns pieces with ``"".join(pieces) == text``:

* Sentence boundaries come from Punkt's ``span_tokenize`` (abbreviations such as
  "Mr." learned from the training text, plus a small built-in English list so short
  corpora still get "Mr. Darcy" right; closing quotes and brackets stay with their
  sentence).
* A blank line (a line with only whitespace) always ends a sentence, so headings and
  speaker names ("First Citizen:") do not glue onto the next sentence.
* **Whitespace between two sentences goes with the following piece** (" The cat
  sat."), which is how GPT-2's pre-tokenizer attaches spaces to words, so
  tokenizing sentence by sentence costs no extra space tokens. Whitespace before
  the first sentence belongs to the first piece, after the last to the last piece.
* Every piece except possibly a whitespace-only text contains non-whitespace;
  ``split("")`` is ``[]``.

Training (``SentenceSplitter.train``) is deterministic: the same texts in the same
order give the same parameters. ``splitter.params`` pickles, so a parent process
trains once and ships the parameters to worker processes.

Saved model. ``splitter.to_json()`` is the canonical JSON of the Punkt parameters
(no pickle: loading a model never runs code), ``SentenceSplitter.load(path)``
reads it back, so one model can split every part of a corpus::

    {"format": "megacompress-punkt", "version": 1,
     "abbrev_types":  [str, ...],            sorted; the built-in list included
     "collocations":  [[str, str], ...],     sorted
     "sent_starters": [str, ...],            sorted
     "ortho_context": {str: int, ...}}       orthographic flags, non-zero only

Keys are sorted, the text is ASCII (JSON escapes) and ends with a newline, so
equal parameters give byte-identical files and ``sentence_model_digest`` (sha256
of the text) identifies the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable

from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer, PunktTrainer

from megacompress.errors import UserError

# Lower-cased, without the final period (Punkt's convention for abbreviation types).
DEFAULT_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr prof rev gen col capt lt sgt hon messrs mme mlle "
    "e.g i.e etc vs cf no vol fig p pp ch sec jan feb mar apr jun jul aug sep sept oct nov dec".split()
)

MODEL_FORMAT = "megacompress-punkt"
MODEL_VERSION = 1

# A whitespace run holding a blank line; the match starts right after the previous
# non-whitespace character, which is where the cut goes.
_BLANK_LINE = re.compile(r"\s*\n[^\S\n]*\n")


class SentenceModelError(UserError, ValueError):
    """A saved sentence model is unreadable or malformed; the message names the file."""


def sentence_model_digest(model_json: str) -> str:
    """sha256 hex digest of a model's JSON text (as written by ``to_json``)."""
    return hashlib.sha256(model_json.encode()).hexdigest()


def _is_str_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _params_from_dict(model, path: str) -> PunktParameters:
    """Validate the parsed JSON ``model`` of file ``path`` and build the parameters."""
    if not isinstance(model, dict) or model.get("format") != MODEL_FORMAT:
        raise SentenceModelError(f"{path}: not a sentence model (expected a JSON object with "
                                 f"\"format\": \"{MODEL_FORMAT}\")")
    if model.get("version") != MODEL_VERSION:
        raise SentenceModelError(f"{path}: unsupported sentence model version {model.get('version')!r} "
                                 f"(expected {MODEL_VERSION})")
    ortho = model.get("ortho_context")
    checks = [
        ("abbrev_types", _is_str_list(model.get("abbrev_types")), "a list of strings"),
        ("sent_starters", _is_str_list(model.get("sent_starters")), "a list of strings"),
        ("collocations", isinstance(model.get("collocations"), list)
         and all(_is_str_list(c) and len(c) == 2 for c in model["collocations"]), "a list of [str, str] pairs"),
        ("ortho_context", isinstance(ortho, dict) and all(type(v) is int and v >= 0 for v in ortho.values()),
         "an object of non-negative integers"),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise SentenceModelError(f"{path}: \"{key}\" must be {expected}")
    params = PunktParameters()
    params.abbrev_types.update(model["abbrev_types"])
    params.sent_starters.update(model["sent_starters"])
    params.collocations.update(tuple(c) for c in model["collocations"])
    params.ortho_context.update(ortho)
    return params


SHARD_MODEL_SUFFIX = ".sentences.json"  # preprocess's name for a shard's model: PREFIX.sentences.json


def _meta_of(path: str) -> str:
    return str(path)[:-len(SHARD_MODEL_SUFFIX)] + ".meta.json"


def recorded_digest(path: str) -> str | None:
    """The sha256 the shard's ``meta.json`` records for the model file ``path`` (``sentence_model``:
    ``file`` and ``sha256``), None when ``path`` is not a shard's model or nothing is recorded."""
    meta_path = _meta_of(path)
    if not str(path).endswith(SHARD_MODEL_SUFFIX) or not os.path.isfile(meta_path):
        return None
    try:
        with open(meta_path, encoding="utf-8") as f:
            recorded = json.load(f).get("sentence_model")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise SentenceModelError(f"{meta_path}: unreadable, so {path} cannot be checked ({exc})") from None
    if not recorded:
        return None
    if (not isinstance(recorded, dict) or recorded.get("file") != os.path.basename(path)
            or not isinstance(recorded.get("sha256"), str)):
        raise SentenceModelError(f"{meta_path}: 'sentence_model' does not record {os.path.basename(path)} and its "
                                 "sha256")
    return recorded["sha256"]


class SentenceSplitter:
    """Punkt-based lossless splitter; see the module docstring for the piece rules."""

    def __init__(self, params: PunktParameters | None = None) -> None:
        if params is None:
            params = PunktParameters()
        params.abbrev_types.update(DEFAULT_ABBREVIATIONS)
        self.params = params
        self._punkt = PunktSentenceTokenizer(params)

    @classmethod
    def train(cls, texts: Iterable[str]) -> "SentenceSplitter":
        """Learn abbreviations, collocations and sentence starters from ``texts``."""
        trainer = PunktTrainer()
        for text in texts:
            trainer.train(text, finalize=False)
        trainer.finalize_training()
        return cls(trainer.get_params())

    @classmethod
    def load(cls, path: str) -> "SentenceSplitter":
        """The splitter saved (``to_json``) in ``path``; ``SentenceModelError`` naming the file if invalid.

        A shard's model (``PREFIX.sentences.json``) must also match the sha256 its ``PREFIX.meta.json``
        records (`recorded_digest`): a valid-looking edit would cut sentences differently, silently.
        """
        try:
            with open(path, "rb") as f:
                raw = f.read()
            model = json.loads(raw.decode("utf-8"))
        except FileNotFoundError:
            raise SentenceModelError(f"{path}: sentence model file does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SentenceModelError(f"{path}: invalid sentence model JSON ({exc})") from None
        recorded = recorded_digest(path)
        if recorded is not None and hashlib.sha256(raw).hexdigest() != recorded:
            raise SentenceModelError(f"{path}: contents changed since it was written (corrupt or edited): sha256 "
                                     f"{hashlib.sha256(raw).hexdigest()[:12]}, {_meta_of(path)} records "
                                     f"{recorded[:12]}")
        return cls(_params_from_dict(model, path))

    def to_json(self) -> str:
        """Canonical JSON of the parameters (layout in the module docstring)."""
        p = self.params
        model = {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "abbrev_types": sorted(p.abbrev_types),
            "collocations": sorted([a, b] for a, b in p.collocations),
            "sent_starters": sorted(p.sent_starters),
            # Punkt's defaultdict gains zero entries when splitting looks words up; zero = absent.
            "ortho_context": {k: v for k, v in sorted(p.ortho_context.items()) if v},
        }
        return json.dumps(model, indent=1, sort_keys=True) + "\n"  # ASCII: the same bytes under any locale

    def boundaries(self, text: str) -> list[int]:
        """Sorted start offsets of pieces 1..n-1 (piece 0 starts at 0)."""
        cuts = {end for _, end in self._punkt.span_tokenize(text)}
        cuts.update(match.start() for match in _BLANK_LINE.finditer(text))
        first = len(text) - len(text.lstrip())
        last = len(text.rstrip())
        return sorted(c for c in cuts if first < c < last)

    def split(self, text: str) -> list[str]:
        if not text:
            return []
        starts = [0, *self.boundaries(text), len(text)]
        return [text[a:b] for a, b in zip(starts, starts[1:])]


def split_sentences(text: str, splitter: SentenceSplitter | None = None) -> list[str]:
    """Split with ``splitter`` (default: untrained Punkt plus the built-in abbreviations)."""
    return (splitter or _default_splitter()).split(text)


_DEFAULT: SentenceSplitter | None = None


def _default_splitter() -> SentenceSplitter:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = SentenceSplitter()
    return _DEFAULT
