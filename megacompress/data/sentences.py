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
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer, PunktTrainer

# Lower-cased, without the final period (Punkt's convention for abbreviation types).
DEFAULT_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr prof rev gen col capt lt sgt hon messrs mme mlle "
    "e.g i.e etc vs cf no vol fig p pp ch sec jan feb mar apr jun jul aug sep sept oct nov dec".split()
)

# A whitespace run holding a blank line; the match starts right after the previous
# non-whitespace character, which is where the cut goes.
_BLANK_LINE = re.compile(r"\s*\n[^\S\n]*\n")


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
