"""A toy fourth method, "chunk": a GPT whose tokens attend only inside fixed-size chunks of
their document (block-diagonal causal attention), defined entirely outside ``megacompress``.

Loaded like any method (`megacompress.plugins`)::

    PYTHONPATH=tests MEGACOMPRESS_PLUGINS=plugins.chunk_method python -m megacompress ...

Importing the package registers

* the tokenizer special ``<CHUNK>`` (role ``chunk``): the first token of every training sample
  and of every prompt;
* the mask kind ``chunk_causal`` (`masks`), block-diagonal, so flash-attn could run it;
* the architecture ``chunk`` with its config field ``chunk_size`` and the preset
  ``tiny-chunk`` (`model`);
* the dataset kind ``chunk``: GPT samples that start with ``<CHUNK>`` (`data`);
* the cached generator: a per-row KV cache that holds only the current chunk (`generation`);
* the subcommand ``megacompress chunk info --model DIR`` (`cli`).
"""

from megacompress import plugins

# Specials take ids in registration order: load the built-in methods first, so <CHUNK> gets the
# same id whether this package is imported directly or found through MEGACOMPRESS_PLUGINS.
plugins.load_methods()

from megacompress.command import register_command  # noqa: E402
from megacompress.data.tokenizers import register_special  # noqa: E402

CHUNK_ROLE, CHUNK_TEXT = "chunk", "<CHUNK>"
register_special(CHUNK_ROLE, CHUNK_TEXT)

from plugins.chunk_method import data, generation, masks, model  # noqa: E402,F401  (registration)
from plugins.chunk_method.model import ChunkConfig, ChunkGPT  # noqa: E402

register_command("chunk", "Chunk models (toy plugin method): show a model's chunk size and <CHUNK> token.",
                 "plugins.chunk_method.cli:main")

__all__ = ["CHUNK_ROLE", "CHUNK_TEXT", "ChunkConfig", "ChunkGPT"]
