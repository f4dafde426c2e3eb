"""megacompress: pretraining language models over compressed text.

Subpackages: ``data`` (shards, tokenizers, datasets), ``parallel`` (process groups,
tensor-parallel layers), ``attention`` (mask functions and backends), ``models``,
``compression``, ``training`` (DeepSpeed engine, checkpoints), ``generation``.
"""

__version__ = "0.1.0"


def _default_deepspeed_accelerator() -> None:
    # Without CUDA DeepSpeed picks the CPU anyway, but logs a notice on every rank at import;
    # naming it first keeps every command's output to what matters (an explicit setting wins).
    import os

    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"


_default_deepspeed_accelerator()
