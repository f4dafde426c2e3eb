"""megacompress: pretraining language models over compressed text.

Subpackages: ``data`` (shards, tokenizers, datasets), ``parallel`` (process groups,
tensor-parallel layers), ``attention`` (mask functions and backends), ``models``,
``compression``, ``training`` (DeepSpeed engine, checkpoints), ``generation``.
"""

__version__ = "0.1.0"
