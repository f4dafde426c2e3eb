"""``megacompress equal-info {compress,decompress,evaluate}`` (docs/equal_info.md).

The same functions run as ``python tools/compress_corpus.py``, ``python tools/decompress_corpus.py``
and ``python -m megacompress.compression.evaluate``.
"""

from __future__ import annotations

from megacompress.command import Subcommand, run_subcommand

SUBCOMMANDS = {c.name: c for c in (
    Subcommand("compress", "Compress a corpus into bitstream token shards (Equal-Info windows under an M1, or a "
                           "baseline scheme).", "megacompress.methods.equal_info.compress:main"),
    Subcommand("decompress", "Decode a bitstream shard back to the original JSON-lines text, losslessly.",
               "megacompress.methods.equal_info.decompress:main"),
    Subcommand("evaluate", "Bits per byte of a model on a shard (an M2 on bitstream tokens, or a token-level LM).",
               "megacompress.methods.equal_info.evaluate:main"),
)}


def main(argv: list[str] | None = None) -> int:
    return run_subcommand("megacompress equal-info", SUBCOMMANDS, argv,
                          "Equal-Info Windows: text arithmetic-coded under a byte LM (M1) into fixed-bit windows, "
                          "and LMs trained over those tokens.")
