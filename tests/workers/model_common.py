"""Shared by the model TP worker and tests/test_model_tp.py: the config and batch both sides use."""

import argparse
import os

import torch

from megacompress.models.config import ModelConfig
from megacompress.parallel import sharding, state


def small_config() -> ModelConfig:
    # vocab 300 pads to 384 at TP=1 and 512 at TP=2: exercises the padding invariance.
    return ModelConfig(vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       ffn_hidden_size=128, max_seq_len=32)


def make_batch(config: ModelConfig) -> dict[str, torch.Tensor]:
    """Two packed rows: documents of 5 + 7 tokens + 4 padding, and one 16-token document."""
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, config.vocab_size, (2, 16), generator=gen)
    document_ids = torch.tensor([[0] * 5 + [1] * 7 + [-1] * 4, [0] * 16])
    position_ids = torch.tensor([list(range(5)) + list(range(7)) + [0] * 4, list(range(16))])
    labels = torch.roll(input_ids, -1, dims=1)
    labels[0, 4] = labels[0, 11:] = -100  # document ends and padding
    labels[1, 15] = -100
    return dict(input_ids=input_ids, position_ids=position_ids, document_ids=document_ids, labels=labels)


def gathered_grads(model, vocab_size: int) -> dict[str, torch.Tensor]:
    """Every parameter's full gradient: TP shards gathered, the embedding cut to the real vocabulary."""
    grads = {}
    for name, p in model.named_parameters():
        g = sharding.gather(p.grad, p.partition_dim) if getattr(p, "tensor_model_parallel", False) else p.grad
        grads[name] = g[:vocab_size] if name == "embed.weight" else g
    return grads


def start_tp_worker() -> argparse.Namespace:
    """A TP worker's start: ``--out DIR``, one thread, TP = world size over gloo."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    state.initialize(tensor_parallel_size=int(os.environ["WORLD_SIZE"]), backend="gloo")
    return args
