"""Text from an M2 (``megacompress generate --model M2_EXPORT``): the bitstream tokenizer's M1.

An exported M2 records its bitstream tokenizer (``bitstream.json``: the codec settings, the
M1's path and hash). ``generate`` then works as for any model: the prompt is compressed by
M1 into windows (its last window closed and padded as at a document's end), M2 samples
window tokens with its KV cache (``--max-new-tokens`` counts M2 tokens; end-of-document ends a
row) and each finished window is decoded by M1 and printed as it arrives: with 16-bit
windows of 8-bit tokens (v256) a window is two tokens, and half a window is never printed.
"""

from __future__ import annotations

import argparse
import os

from megacompress.methods.equal_info.codec import CodecError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "bitstream models (Equal-Info M2)",
        "A prompt is compressed by M1 into windows, its last window closed and padded\n"
        "as at a document's end; --max-new-tokens counts M2 tokens; each finished window\n"
        "is decoded by M1 and printed as it arrives (never half a window).")
    group.add_argument("--m1", default=None, metavar="DIR",
                       help="the exported M1 that codes the M2's text (default: the path its export records); "
                            "an M1 other than the recorded one (by hash) is refused")


def prepare(tokenizer, args: argparse.Namespace):
    """Load the M1 (``--m1`` or the recorded path) into the bitstream tokenizer."""
    from megacompress.methods.equal_info.m1 import M1

    path = args.m1 or tokenizer.m1_path
    if path is None:
        raise CodecError(f"{tokenizer.model_path}: the bitstream needs no M1 (scheme {tokenizer.config.scheme}), "
                         "but generate decodes equal_info windows only")
    if not os.path.isdir(path):
        where = "--m1" if args.m1 else f"the M1 path recorded in {tokenizer.model_path}"
        raise CodecError(f"{path} ({where}) is not a directory; pass --m1 DIR, the exported M1 the shards were "
                         "compressed with")
    return tokenizer.with_m1(M1(path))
