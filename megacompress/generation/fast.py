"""Which cached generator serves an architecture (``megacompress generate --mode fast``).

A method whose model needs more than the GPT's KV cache registers its generator in its own
package::

    @register_generator("myarch", add_arguments=add_flags, encode_prompts=encode)
    def generate_fast(model, prompts, max_new_tokens, **options) -> GenerationOutput: ...

every other architecture gets `megacompress.generation.generate.generate`. Generators take
``(model, prompts, max_new_tokens, **options)`` as ``generate`` does. ``add_arguments(parser)``
adds the method's own ``generate`` flags (in its own argument group); ``encode_prompts(tokenizer,
texts, args) -> (prompts, options)`` turns the prompt texts into token ids the way the model
was trained on them and returns extra keyword options for both the fast and the slow mode
(e.g. ``eos_id``, whose tokens the CLI leaves out of the printed text).

A method's tokenizer kind whose ``encode`` / ``decode`` need more than the model directory's
record (a bitstream tokenizer needs its M1) registers what readies it::

    register_tokenizer_setup("mykind", add_arguments=add_flags, prepare=load_what_it_needs)

``prepare(tokenizer, args) -> tokenizer`` runs after the tokenizer is read from ``--model``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from megacompress import plugins
from megacompress.generation.generate import generate


@dataclass(frozen=True)
class Generator:
    generate: Callable
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    encode_prompts: Callable | None = None

    def encode(self, tokenizer, texts: list[str], args: argparse.Namespace) -> tuple[list[list[int]], dict]:
        if self.encode_prompts is None:
            return [tokenizer.encode(t) for t in texts], {}
        return self.encode_prompts(tokenizer, texts, args)


_GENERATORS: dict[str, Generator] = {}


def register_generator(architecture: str, *, add_arguments: Callable | None = None,
                       encode_prompts: Callable | None = None) -> Callable[[Callable], Callable]:
    def register(fn: Callable) -> Callable:
        _GENERATORS[architecture] = Generator(fn, add_arguments, encode_prompts)
        return fn

    return register


def generator(architecture: str) -> Generator:
    plugins.load_methods()
    return _GENERATORS.get(architecture, Generator(generate))


def fast_generator(architecture: str) -> Callable:
    return generator(architecture).generate


def add_generator_arguments(parser: argparse.ArgumentParser) -> None:
    """Every registered generator's and tokenizer setup's own flags (``megacompress generate --help``
    lists them all)."""
    plugins.load_methods()
    for spec in [*_GENERATORS.values(), *_TOKENIZER_SETUPS.values()]:
        if spec.add_arguments is not None:
            spec.add_arguments(parser)


@dataclass(frozen=True)
class TokenizerSetup:
    add_arguments: Callable[[argparse.ArgumentParser], None] | None
    prepare: Callable


_TOKENIZER_SETUPS: dict[str, TokenizerSetup] = {}


def register_tokenizer_setup(kind: str, *, prepare: Callable, add_arguments: Callable | None = None) -> None:
    _TOKENIZER_SETUPS[kind] = TokenizerSetup(add_arguments, prepare)


def prepare_tokenizer(tokenizer, args: argparse.Namespace):
    """``tokenizer`` readied for ``generate`` by its kind's registered setup (itself if none)."""
    plugins.load_methods()
    setup = _TOKENIZER_SETUPS.get(tokenizer.name)
    return tokenizer if setup is None else setup.prepare(tokenizer, args)
