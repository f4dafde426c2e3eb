"""GPTHF FLOPs (docs/models.md, "FLOPs"): a GPTHF-E-B has the matmuls of a GPT of E + B layers;
only the keys each query attends to differ:

    training / forward  2N + 4 S H (E f_enc + B f_body)   (x 3 for training)
    one generated token 2N + 4 H (E p + B (n + 1))

with p the tokens of the current sentence up to and including the new one (encoder KV
cache) and n the finished sentences before it (body KV cache).
"""

from __future__ import annotations

from megacompress.models.flops import forward_flops


def flops_per_token(config, seq_len: int | None = None, *, encoder_fraction: float = 1.0,
                    body_fraction: float = 1.0, training: bool = True) -> float:
    """FLOPs per token with separate attended fractions for the encoder and body masks."""
    seq_len = config.max_seq_len if seq_len is None else seq_len
    keys = seq_len * (config.encoder_layers * encoder_fraction + config.body_layers * body_fraction)
    forward = forward_flops(config, keys)
    return 3 * forward if training else forward


def decode_flops(config, *, sentence_len: int, sentences: int) -> float:
    """Forward FLOPs of one generated token of one row with the sentence caches:
    ``sentence_len`` keys in the encoder, ``sentences + 1`` in the body."""
    return forward_flops(config, config.encoder_layers * sentence_len + config.body_layers * (sentences + 1))
