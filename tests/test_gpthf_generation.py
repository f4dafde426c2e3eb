"""GPTHF generation: fast (sentence KV caches) and the public code's algorithm give the logits
of a teacher-forced forward over the final sequence; caches hold exactly the current sentence /
the finished sentences; greedy fast == slow; stop conditions; errors."""

import pytest
import torch
from workers.gpthf_common import EOD, EOS, PROMPTS, small_gpthf

from megacompress.methods.gpthf import generation as gpthf
from megacompress.methods.gpthf.generation import SentenceCaches, encode_finished, generate_fast, generate_public_algorithm
from megacompress.generation.sampling import SamplingConfig
from megacompress.generation.uncached import generate_uncached, teacher_forced_max_diff
from megacompress.models import ModelConfig, build_model

SAMPLED = SamplingConfig(temperature=1.0, seed=5)


@pytest.fixture(scope="module")
def model():
    return build_model(small_gpthf(), seed=1).eval()


@pytest.mark.parametrize("algorithm", [generate_fast, generate_public_algorithm])
def test_logits_equal_teacher_forced_forward(model, algorithm, monkeypatch):
    monkeypatch.setattr(gpthf, "CACHE_MARGIN", 1)  # the caches must grow while generating
    out = algorithm(model, PROMPTS, 30, eos_id=EOS, sampling=SAMPLED, return_logits=True)
    assert sum(t.count(EOS) for t in out.tokens) >= 10  # sentences end while generating, in every state
    assert teacher_forced_max_diff(model, PROMPTS, out, EOS) < 1e-4


def test_caches_hold_current_sentence_and_finished_sentences(model):
    prompts = [[1, 4, EOS, 5, 6], [7, 5, EOS], [4, EOS, 5, EOS]]
    with torch.no_grad():
        caches = SentenceCaches(model, 3, 4)
        caches.add_sentences(encode_finished(model, [[1, 4, EOS], [], [4, EOS]], EOS, 0))
        caches.feed(torch.tensor([[5, 6], [7, 5], [5, EOS]]), torch.tensor([[3, 4], [0, 1], [2, 3]]),
                    torch.tensor([2, 2, 2]), EOS)
        assert caches.caches["encoder"].lengths.tolist() == [2, 2, 0]  # the EOS row restarts its sentence
        assert caches.caches["body"].lengths.tolist() == [1, 0, 2]  # one entry per finished sentence
        caches.feed(torch.tensor([[EOS], [EOS], [4]]), torch.tensor([[5], [2], [4]]), torch.tensor([1, 0, 1]), EOS)
        assert caches.caches["encoder"].lengths.tolist() == [0, 2, 1]  # row 1 was not fed (count 0)
        assert caches.caches["body"].lengths.tolist() == [2, 0, 2]
    per_slot = 2 * 2 * 8 * 4  # (k, v) x 2 KV heads x head dim 8 x fp32, per layer
    assert caches.nbytes() == per_slot * (2 * (0 + 2 + 1) + 1 * (2 + 0 + 2))


def test_greedy_fast_slow_and_public_algorithm_agree(model):
    fast = generate_fast(model, PROMPTS, 20, eos_id=EOS)
    assert generate_uncached(model, PROMPTS, 20, eos_id=EOS).tokens == fast.tokens
    assert generate_public_algorithm(model, PROMPTS, 20, eos_id=EOS).tokens == fast.tokens


def test_stop_at_eod_or_max_tokens_and_seeded_filters(model):
    out = generate_fast(model, PROMPTS, 30, eos_id=EOS, eod_id=EOD, sampling=SAMPLED, return_logits=True)
    lengths = [len(t) for t in out.tokens]
    assert min(lengths) < 30  # some rows stopped early...
    for tokens in out.tokens:  # ...right after their first EOD, others ran to the limit
        assert (EOD in tokens and tokens.index(EOD) == len(tokens) - 1) or len(tokens) == 30
    assert teacher_forced_max_diff(model, PROMPTS, out, EOS) < 1e-4
    assert max(len(t) for t in generate_fast(model, PROMPTS, 3, eos_id=EOS).tokens) == 3
    filtered = SamplingConfig(temperature=0.8, top_k=4, top_p=0.9, seed=11)
    first = generate_fast(model, PROMPTS, 15, eos_id=EOS, sampling=filtered).tokens
    assert generate_fast(model, PROMPTS, 15, eos_id=EOS, sampling=filtered).tokens == first
    assert generate_fast(model, PROMPTS, 15, eos_id=EOS, sampling=SamplingConfig(temperature=0.8, seed=12)).tokens != first


def test_errors(model):
    with pytest.raises(ValueError, match="eos_id 8 is not in the model's vocabulary"):
        generate_fast(model, PROMPTS, 4, eos_id=8)
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len 64"):
        generate_fast(model, PROMPTS, 60, eos_id=EOS)
    gpt = build_model(ModelConfig(vocab_size=8, hidden_size=32, num_layers=2, num_heads=4, ffn_hidden_size=64,
                                  max_seq_len=64))
    with pytest.raises(ValueError, match="needs a GPTHF model, got architecture 'gpt'"):
        generate_fast(gpt, PROMPTS, 4, eos_id=EOS)
    with pytest.raises(ValueError, match="needs eos_id"):
        generate_uncached(model, PROMPTS, 4)
