"""Shared by the GPTHF generation tests and their TP worker: a small GPTHF and prompts in every state."""

from megacompress.models.config import ModelConfig

EOS, EOD = 3, 2
# Mid-sentence, exactly at a sentence end, one token, no EOS at all, a long one: rows of different lengths.
PROMPTS = [[1, 4, EOS, 5, 6], [7, 5, EOS], [4], [5, 6, 7, 4, 5, 6, 1], [6, EOS, 4, 4, EOS, 5, EOS, 7, 1, 7, EOS]]


def small_gpthf(vocab_size: int = 8) -> ModelConfig:
    # A vocabulary of 8 makes EOS (and EOD) frequent under sampling: sentences end while generating.
    return ModelConfig(vocab_size=vocab_size, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2,
                       ffn_hidden_size=64, max_seq_len=64, architecture="gpthf", encoder_layers=2, body_layers=1)

