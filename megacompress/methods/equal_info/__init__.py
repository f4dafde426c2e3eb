"""Equal-Info Windows (docs/equal_info.md): text arithmetic-coded under a small byte LM (M1) into
fixed-bit windows, and a second LM (M2) trained over those bitstream tokens.

Importing the package registers the ``bitstream`` dataset kind and tokenizer kind (recorded
by exports; readied for ``generate`` by ``generation``), the paper's M2 sizes as model presets
(``presets``: ``eiw-m2-25m`` ... ``eiw-m2-2b``) and the ``megacompress equal-info`` subcommand.
Modules: ``arithmetic`` (the coder), ``windows`` /
``equal_info`` / ``plain_ac`` / ``baselines`` / ``codec`` (the schemes), ``m1`` (the byte LM),
``shards`` / ``tokenizer`` / ``dataset`` (bitstream shards and their training side),
``compress`` / ``decompress`` / ``evaluate`` (the command-line tools), ``generation`` (text from an M2).
"""

from megacompress.command import register_command
from megacompress.data.tokenizers import TokenizerFileError, register_tokenizer_kind
from megacompress.generation.fast import register_tokenizer_setup
from megacompress.methods.equal_info import dataset  # noqa: F401  (registers the bitstream dataset kind)
from megacompress.methods.equal_info import presets  # noqa: F401  (registers the paper's M2 sizes)


def _bitstream_tokenizer(model_path: str | None):
    from megacompress.methods.equal_info.tokenizer import BitstreamTokenizer

    if model_path is None:
        raise TokenizerFileError("the bitstream tokenizer needs a bitstream shard's meta.json (tokenizer.model_path)")
    return BitstreamTokenizer.from_meta_file(model_path)


def _prepare_for_generation(tokenizer, args):
    from megacompress.methods.equal_info.generation import prepare

    return prepare(tokenizer, args)


def _generate_arguments(parser):
    from megacompress.methods.equal_info.generation import add_arguments

    add_arguments(parser)


# An export copies the shard's meta.json (codec settings, M1 path and hash) as bitstream.json.
register_tokenizer_kind("bitstream", _bitstream_tokenizer, record_file="bitstream.json")
register_tokenizer_setup("bitstream", prepare=_prepare_for_generation, add_arguments=_generate_arguments)
register_command("equal-info", "Equal-Info Windows: compress / decompress a corpus into bitstream shards, "
                               "evaluate bits per byte.", "megacompress.methods.equal_info.cli:main")
