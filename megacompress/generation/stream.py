"""Print generated text as it arrives (``megacompress generate`` with one prompt).

A tokenizer's ``decode`` of a growing token list grows at the end: a token of a byte-level
BPE may carry half of a character (decoded as U+FFFD until the rest arrives), and a
tokenizer whose tokens only mean text in groups (a bitstream's windows) decodes the finished
groups only. So the stream prints, after each step, what the decoded text gained, holding
back a trailing U+FFFD until the next token settles it; `close` prints the rest.
"""

from __future__ import annotations

import sys
from collections.abc import Container, Sequence
from typing import TextIO

REPLACEMENT = "\ufffd"


class TextStream:
    """Streams one row: ``update(tokens)`` after each step, ``close()`` at the end; ``skip``:
    ids that are not text (e.g. a sentence-level model's sentence ends)."""

    def __init__(self, tokenizer, skip: Container[int] = (), out: TextIO | None = None):
        self.tokenizer, self.skip, self.out = tokenizer, skip, out or sys.stdout
        self.printed = ""

    def text(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode([t for t in tokens if t not in self.skip])

    def update(self, tokens: Sequence[int]) -> None:
        self._print(self.text(tokens).rstrip(REPLACEMENT))

    def close(self, tokens: Sequence[int]) -> None:
        self._print(self.text(tokens))
        self.out.write("\n")
        self.out.flush()

    def _print(self, text: str) -> None:
        if len(text) > len(self.printed) and text.startswith(self.printed):
            self.out.write(text[len(self.printed):])
            self.out.flush()
            self.printed = text
