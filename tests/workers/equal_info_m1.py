"""Helpers for the Equal-Info tests: a tiny random byte model exported like a trained M1."""

from pathlib import Path

from megacompress.models import GPT, ModelConfig


def save_tiny_m1(directory: Path, seed: int = 0, hidden: int = 32, layers: int = 1, context: int = 128) -> Path:
    """A random ``gpt`` over the bytes vocabulary (259 ids), written by ``save_pretrained``."""
    config = ModelConfig(vocab_size=259, hidden_size=hidden, num_layers=layers, num_heads=4, num_kv_heads=2,
                         ffn_hidden_size=2 * hidden, max_seq_len=context)
    GPT(config, seed=seed).save_pretrained(directory)
    return Path(directory)
