"""KV-cache generation equals full-sequence forwards; eod stopping; sampling filters; cache errors."""

import pytest
import torch

from megacompress.generation.generate import generate, left_pad
from megacompress.models.kv_cache import KVCache, KVCacheOverflow
from megacompress.generation.sampling import SamplingConfig, filter_logits, sample_next
from megacompress.models.config import ModelConfig
from megacompress.models.gpt import GPT

PROMPTS = [[11, 12, 13], [1, 2, 3, 4, 5, 6, 7], [42], [8, 9, 10, 11, 12]]


@pytest.fixture(scope="module")
def model():
    config = ModelConfig(vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                         ffn_hidden_size=96, max_seq_len=32)
    return GPT(config, seed=5).eval()


def test_kv_cache_logits_equal_full_forward(model):
    new = 6
    out = generate(model, PROMPTS, new, return_logits=True)
    assert len(out.step_logits) == new
    assert len(out.step_seconds) == new - 1 and all(s > 0 for s in out.step_seconds)  # one per decode step
    for row, prompt in enumerate(PROMPTS):
        tokens = out.tokens[row]
        assert len(tokens) == new
        sequence = torch.tensor([prompt + tokens[:-1]])
        with torch.no_grad():
            full = model(sequence).logits[0, :, :300]
        for step in range(new):
            torch.testing.assert_close(out.step_logits[step][row], full[len(prompt) - 1 + step],
                                       rtol=1e-5, atol=1e-5)
            assert tokens[step] == int(full[len(prompt) - 1 + step].argmax())


def test_rows_stop_at_eod(model):
    reference = generate(model, PROMPTS, 6).tokens
    eod = reference[0][2]
    out = generate(model, PROMPTS, 6, eod_id=eod).tokens
    for ref, got in zip(reference, out):
        expected = ref[:ref.index(eod) + 1] if eod in ref else ref
        assert got == expected


def test_sampling_is_seeded_and_top_k1_is_greedy(model):
    greedy = generate(model, PROMPTS, 4).tokens
    assert generate(model, PROMPTS, 4, sampling=SamplingConfig(temperature=0.7, top_k=1, seed=1)).tokens == greedy
    a = generate(model, PROMPTS, 4, sampling=SamplingConfig(temperature=1.5, top_p=0.9, seed=4)).tokens
    b = generate(model, PROMPTS, 4, sampling=SamplingConfig(temperature=1.5, top_p=0.9, seed=4)).tokens
    assert a == b


def test_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # nucleus 0.75: 0.5 < 0.75 so 0.3 is kept, then 0.8 >= 0.75 drops the rest
    assert torch.isinf(filter_logits(logits, top_p=0.75)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.4)).tolist() == [[False, True, True, True]]
    assert sample_next(logits, SamplingConfig()).tolist() == [0]
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)


def test_left_pad_layout():
    ids, pos, docs = left_pad([[7, 8], [1, 2, 3]], pad_id=0)
    assert ids.tolist() == [[0, 7, 8], [1, 2, 3]]
    assert pos.tolist() == [[0, 0, 1], [0, 1, 2]]
    assert docs.tolist() == [[-1, 0, 0], [0, 0, 0]]


def test_errors(model):
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len 32"):
        generate(model, PROMPTS, 30)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[1], []], 3)
    cache = KVCache(1, 1, 1, 4, max_len=2)
    with pytest.raises(KVCacheOverflow, match="2 slots is full"):
        cache.begin_step(torch.zeros(1, 3, dtype=torch.long))
