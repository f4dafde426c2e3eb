"""``megacompress chunk``: chunk models (the toy plugin method of tests/test_method_plugin.py).

``megacompress chunk info --model DIR`` prints a saved chunk model's chunk size and the id of
its ``<CHUNK>`` token.
"""

from __future__ import annotations

from megacompress import cli
from megacompress.errors import UserError
from megacompress.data.tokenizers import model_tokenizer
from megacompress.models import pretrained


class NotAChunkModel(UserError, ValueError):
    """A model directory whose architecture is not ``chunk``."""


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("plugins.chunk_method.cli", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="chunk size and <CHUNK> id of a saved chunk model")
    info.add_argument("--model", required=True, help="save_pretrained / export directory")
    args = parser.parse_args(argv)
    config = pretrained.load_config(args.model)
    if config.architecture != "chunk":
        raise NotAChunkModel(f"{args.model}: architecture {config.architecture!r}, not 'chunk'")
    tokenizer = model_tokenizer(args.model)
    print(f"architecture: {config.architecture}")
    print(f"chunk_size: {config.chunk_size}")
    print(f"chunk token: <CHUNK> = {tokenizer.special_id('chunk')} ({tokenizer.name} tokenizer)")
    return 0
