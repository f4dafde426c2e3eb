"""Gist caching: stored gist K/V + per-row offsets give exactly the gist-masked model, in mixed batches."""

import pytest
import torch

from megacompress.methods.gist.data import InstructionFormat
from megacompress.data.tokenizers import build_tokenizer
from megacompress.methods.gist import cache as gist_cache
from megacompress.generation.generate import length_batches
from megacompress.methods.gist.generate import answer, generate_cached, generate_full
from megacompress.models import load_pretrained
from workers.gist_common import tiny_gist_model

RECORDS = [
    {"instruction": "Say hello.", "input": "the world"},
    {"instruction": "Rewrite the sentence in the past tense, please, with care and attention.", "input": ""},
    {"instruction": "Add the numbers.", "input": "2 and 3 and 4 and 5 and 6 and 7"},
    {"instruction": "Translate.", "input": "She walks to school every day."},
]


@pytest.fixture(scope="module")
def gist2(tmp_path_factory):
    directory = tiny_gist_model(tmp_path_factory.mktemp("gist"), k=2)
    model = load_pretrained(directory).eval()
    with torch.no_grad():  # a random gist row that differs from the mean, so the gists carry something
        model.embed.weight[model.config.vocab_size - 1].normal_(0, 0.5)
    return directory, model, InstructionFormat(build_tokenizer("hf", str(directory)), 2)


def test_cached_generation_equals_the_gist_masked_model_in_mixed_batches(gist2):
    _, model, fmt = gist2
    formatted = [fmt.format(r["instruction"], r["input"]) for r in RECORDS]
    assert len({f.gist_start for f in formatted}) == 4 and len({len(f.tokens) for f in formatted}) == 4
    full = generate_full(model, [f.tokens for f in formatted], [f.gist_start for f in formatted], 12,
                         return_logits=True)
    entries = gist_cache.compress(model, fmt, [r["instruction"] for r in RECORDS], batch_size=3)
    cached = generate_cached(model, entries, [f.tokens[f.gist_end:] for f in formatted], 12,
                             return_logits=True)
    assert cached.tokens == full.tokens
    diff = max((a - b).abs().max().item() for a, b in zip(cached.step_logits, full.step_logits))
    assert diff < 1e-4, diff
    alone = generate_cached(model, entries[1:2], [formatted[1].tokens[formatted[1].gist_end:]], 12)
    assert alone.tokens == full.tokens[1:2]
    # the gist mask is what makes caching exact: under it, nothing after the gists sees the instruction
    with torch.no_grad():
        f = formatted[0]
        ids = torch.tensor([f.tokens])
        span = dict(gist_start=torch.tensor([f.gist_start]), gist_end=torch.tensor([f.gist_end]))
        changed = ids.clone()
        changed[0, 1:f.gist_start - 1] = 5  # another instruction, same length
        model.config.gist_variant = "neg_control"
        neg = model(ids, **span).logits[0, f.gist_end:], model(changed, **span).logits[0, f.gist_end:]
        model.config.gist_variant = "pos_control"
        pos = model(ids, **span).logits
        model.config.gist_variant = "gist"
        assert torch.equal(*neg) and torch.allclose(pos, model(ids).logits, atol=1e-6)
        assert not torch.allclose(model(ids, **span).logits, pos, atol=1e-3)


def test_stored_caches_round_trip_and_are_refused_by_another_model_or_k(gist2, tmp_path):
    directory, model, fmt = gist2
    instructions = [r["instruction"] for r in RECORDS]
    identity = gist_cache.model_identity(directory)
    path = gist_cache.save_cache(tmp_path / "cache", instructions, gist_cache.compress(model, fmt, instructions),
                                 model_hash=identity, model_dir=str(directory), k=2,
                                 tokenizer_fingerprint=fmt.tokenizer.fingerprint())
    fingerprint = fmt.tokenizer.fingerprint()
    cache = gist_cache.GistCache(path, model, model_hash=identity, tokenizer_fingerprint=fingerprint)
    assert len(cache) == 4 and RECORDS[0]["instruction"] in cache
    assert answer(model, fmt, RECORDS, 8, cache=cache, batch_size=3) == answer(model, fmt, RECORDS, 8, batch_size=2)
    with pytest.raises(gist_cache.GistCacheError, match="made by another model"):
        gist_cache.GistCache(path, model, model_hash="0" * 64, tokenizer_fingerprint=fingerprint)
    model.config.gist_tokens = 1
    try:
        with pytest.raises(gist_cache.GistCacheError, match="made with k=2 gist tokens, this model uses k=1"):
            gist_cache.GistCache(path, model, model_hash=identity, tokenizer_fingerprint=fingerprint)
    finally:
        model.config.gist_tokens = 2
    with pytest.raises(gist_cache.GistCacheError, match="not in the cache"):
        cache.get("An instruction nobody compressed.")
    with pytest.raises(gist_cache.GistCacheError, match="does not end with its 2 gist token"):
        gist_cache.check_prefix(fmt.tokenizer.encode("Instruction: no gists\n"), fmt, "prompt")
    one = InstructionFormat(fmt.tokenizer, 1)
    with pytest.raises(gist_cache.GistCacheError, match="made for k=2"):
        gist_cache.compress(model, one, instructions)
    with pytest.raises(gist_cache.GistCacheError, match="max_seq_len is 128"):
        gist_cache.compress(model, fmt, ["word " * 200])
    for variant in ("pos_control", "neg_control"):  # their answers need the instruction / no gists
        model.config.gist_variant = variant
        try:
            with pytest.raises(gist_cache.GistCacheError, match=f"a {variant} model has no gist cache"):
                gist_cache.compress(model, fmt, instructions)
        finally:
            model.config.gist_variant = "gist"


def test_batches_grouped_by_length_come_back_in_input_order(gist2):
    assert length_batches([3, 9, 1, 9, 5], 2) == [[1, 3], [4, 0], [2]]
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        length_batches([1], 0)
    _, model, fmt = gist2
    instructions = [r["instruction"] for r in RECORDS]
    bucketed, alone = gist_cache.compress(model, fmt, instructions, 3), gist_cache.compress(model, fmt, instructions, 1)
    for a, b in zip(bucketed, alone):
        assert a.prefix_len == b.prefix_len and torch.allclose(a.keys, b.keys, atol=1e-5)
    cache = dict(zip(instructions, bucketed))
    one_by_one = [answer(model, fmt, [r], 8, cache=cache, batch_size=1)[0] for r in RECORDS]
    assert answer(model, fmt, RECORDS, 8, cache=cache, batch_size=3) == one_by_one


def test_a_packed_prefill_equals_rows_alone_and_computes_no_padding(gist2):
    """Packed prefill: the rows' logits as alone; the matmuls' FLOPs are the sum of the rows' alone
    (no padding), only attention over the packed row adds some; budget 1 = every row alone."""
    from megacompress.methods.gist.evaluate import measure
    from megacompress.models import flops as flop_formulas

    _, model, fmt = gist2
    formatted = [fmt.format(r["instruction"], r["input"]) for r in RECORDS]
    entries = gist_cache.compress(model, fmt, [r["instruction"] for r in RECORDS])

    def cached(rows, new=4, **budget):
        return lambda: generate_cached(model, [entries[i] for i in rows],
                                       [formatted[i].tokens[formatted[i].gist_end:] for i in rows], new,
                                       return_logits=True, **budget)

    def full(rows, new=4, **budget):
        return lambda: generate_full(model, [formatted[i].tokens for i in rows],
                                     [formatted[i].gist_start for i in rows], new, return_logits=True, **budget)

    def flops(run) -> tuple[int, int]:
        """(matmul FLOPs, attention FLOPs) of a call."""
        with flop_formulas.flop_counter_mode() as counter:
            run()
        by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
        attention = sum(n for op, n in by_op.items() if "attention" in op)
        return sum(by_op.values()) - attention, attention

    for side in (cached, full):
        batch = side(range(4))()
        for i in range(4):
            alone = side([i])()
            assert alone.tokens[0] == batch.tokens[i]
            diff = max((a[0] - b[i]).abs().max().item() for a, b in zip(alone.step_logits, batch.step_logits))
            assert diff < 1e-4, diff
        # prefills (+ the first token, which decodes nothing)
        one_at_a_time = [flops(side([i], new=1)) for i in range(4)]
        packed, ragged = flops(side(range(4), new=1)), flops(side(range(4), new=1, prefill_tokens=1))
        assert packed[0] == ragged[0] == sum(f[0] for f in one_at_a_time)
        assert ragged[1] == sum(f[1] for f in one_at_a_time) < packed[1]
    assert measure(side(range(4), new=1), repeats=0)[0] == sum(packed)  # what the benchmark counts
