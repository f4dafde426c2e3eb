"""The per-row KV cache (megacompress.models.kv_cache): rows append at different steps, reset,
and start from stored K/V — each time equal to running that row alone without a cache."""

import pytest
import torch

from megacompress.models.config import ModelConfig
from megacompress.models.gpt import GPT
from megacompress.models.kv_cache import KVCache, KVCacheOverflow

VOCAB = 300


@pytest.fixture(scope="module")
def model():
    config = ModelConfig(vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                         ffn_hidden_size=96, max_seq_len=48)
    return GPT(config, seed=7).eval()


def alone(model, tokens: list[int]) -> torch.Tensor:
    """Logits [len, V] of one row run without a cache."""
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0, :, :VOCAB]


def test_rows_appending_at_different_steps_equal_each_row_alone(model):
    """Every step runs all rows; only the committed rows keep their new tokens; a reset row starts over."""
    gen = torch.Generator().manual_seed(0)
    B = 3
    cache = model.new_kv_cache(B, 40)
    history: list[list[int]] = [[] for _ in range(B)]
    plan = [(3, [0, 1, 2]), (2, [0, 2]), (1, [1]), (1, []), (4, [0, 1]), ("reset", [2]), (2, [1, 2]), (1, [0, 1, 2])]
    for q, commit in plan:
        if q == "reset":
            cache.reset(commit)
            for row in commit:
                history[row] = []
            continue
        chunk = torch.randint(0, VOCAB, (B, q), generator=gen)
        with torch.no_grad():
            logits = model(chunk, kv_cache=cache, kv_commit=commit).logits[..., :VOCAB]
        for row in range(B):
            expected = alone(model, history[row] + chunk[row].tolist())[-q:]
            torch.testing.assert_close(logits[row], expected, rtol=1e-5, atol=1e-5)
            if row in commit:
                history[row] += chunk[row].tolist()
        assert cache.lengths.tolist() == [len(h) for h in history]
    assert cache.nbytes() == sum(map(len, history)) * 2 * 2 * 2 * 16 * 4  # slots x (k,v) x layers x heads x D x fp32


def test_start_from_stored_kv_equals_recomputing(model):
    prompt = [[3, 1, 4, 1, 5, 9, 2], [2, 7, 1, 8, 2, 8, 1]]
    keep = [7, 4]  # row 1 starts from a prefix of its stored entries only
    source = model.new_kv_cache(2, 16)
    with torch.no_grad():
        model(torch.tensor(prompt), kv_cache=source)
        target = model.new_kv_cache(2, 16)
        target.load([k[:, :, :7] for k in source.k], [v[:, :, :7] for v in source.v], keep)
        assert target.lengths.tolist() == keep
        nxt = torch.tensor([[6], [3]])
        logits = model(nxt, kv_cache=target).logits[:, 0, :VOCAB]
    for row in range(2):
        expected = alone(model, prompt[row][:keep[row]] + [int(nxt[row])])[-1]
        torch.testing.assert_close(logits[row], expected, rtol=1e-5, atol=1e-5)


def test_cache_errors(model):
    cache = KVCache(1, 2, 1, 4, max_len=3)
    with pytest.raises(KVCacheOverflow, match="3 slots is full"):
        cache.begin_step(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(IndexError, match="out of range"):
        cache.reset([2])
    with pytest.raises(ValueError, match="lengths"):
        cache.load([torch.zeros(2, 1, 2, 4)], [torch.zeros(2, 1, 2, 4)], [3, 1])
    cache.begin_step(torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(RuntimeError, match="inside a step"):
        cache.reset()
