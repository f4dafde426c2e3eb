"""Equal-Info Windows (docs/equal_info.md): text arithmetic-coded under a small byte LM (M1) into
fixed-bit windows, and a second LM (M2) trained over those bitstream tokens.

Importing the package registers the ``bitstream`` dataset kind and tokenizer kind and the
``megacompress equal-info`` subcommand. Modules: ``arithmetic`` (the coder), ``windows`` /
``equal_info`` / ``plain_ac`` / ``baselines`` / ``codec`` (the schemes), ``m1`` (the byte LM),
``shards`` / ``tokenizer`` / ``dataset`` (bitstream shards and their training side),
``compress`` / ``decompress`` / ``evaluate`` (the command-line tools).
"""

from megacompress.command import register_command
from megacompress.data.tokenizers import TokenizerFileError, register_tokenizer_kind
from megacompress.methods.equal_info import dataset  # noqa: F401  (registers the bitstream dataset kind)


def _bitstream_tokenizer(model_path: str | None):
    from megacompress.methods.equal_info.tokenizer import BitstreamTokenizer

    if model_path is None:
        raise TokenizerFileError("the bitstream tokenizer needs a bitstream shard's meta.json (tokenizer.model_path)")
    return BitstreamTokenizer.from_meta_file(model_path)


register_tokenizer_kind("bitstream", _bitstream_tokenizer)
register_command("equal-info", "Equal-Info Windows: compress / decompress a corpus into bitstream shards, "
                               "evaluate bits per byte.", "megacompress.methods.equal_info.cli:main")
