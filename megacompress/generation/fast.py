"""Which cached generator serves an architecture (``python -m megacompress.generate --mode fast``).

A method whose model needs more than the GPT's KV cache registers its generator in its own
generation module (``@register_generator("gpthf")``); every other architecture gets
`megacompress.generation.generate.generate`. Generators take ``(model, prompts,
max_new_tokens, **options)`` as ``generate`` does, plus ``eos_id`` for sentence models.
"""

from __future__ import annotations

from collections.abc import Callable

from megacompress.generation.generate import generate

_GENERATORS: dict[str, Callable] = {}


def register_generator(architecture: str) -> Callable[[Callable], Callable]:
    def register(fn: Callable) -> Callable:
        _GENERATORS[architecture] = fn
        return fn

    return register


def fast_generator(architecture: str) -> Callable:
    return _GENERATORS.get(architecture, generate)
