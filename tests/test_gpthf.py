"""GPTHF model (docs/gpthf.md, "The model" and "Masks"): config and presets, masks as the model uses them, a two-sentence
example decomposed by hand, parameter count and FLOPs against FlopCounterMode, batch keys,
and a saved model whose config does not match its weights."""

import json

import pytest
import torch

from megacompress.methods.gpthf.generation import SentenceCaches, encode_finished
from megacompress.models import ModelConfig, build_model, load_pretrained, pretrained
from megacompress.models.config import ConfigError
from megacompress.methods.gpthf import flops as gpthf_flops
from megacompress.models.flops import count_parameters, flop_counter_mode
from megacompress.methods.gpthf.model import BODY, ENCODER, GPTHF
from megacompress.models.outputs import gather_logits
from megacompress.models.registry import select_inputs

EOS = 3


def small(**overrides) -> ModelConfig:
    fields = dict(vocab_size=512, hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2, ffn_hidden_size=128,
                  max_seq_len=64, architecture="gpthf", encoder_layers=2, body_layers=1)
    return ModelConfig(**{**fields, **overrides})


def test_presets_and_validation():
    for name, baseline in (("gpthf-8-4", "baseline-12"), ("gpthf-16-8", "baseline-24")):
        config = ModelConfig.from_preset(name)
        assert config.architecture == "gpthf" and config.encoder_layers + config.body_layers == config.num_layers
        assert count_parameters(config) == count_parameters(ModelConfig.from_preset(baseline))
    assert not hasattr(ModelConfig.from_preset("baseline-12"), "encoder_layers")  # the GPT is unaffected
    model = build_model(ModelConfig.from_preset("tiny-gpthf"))
    assert isinstance(model, GPTHF)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(model.config).total
    with pytest.raises(ConfigError, match="encoder_layers 2 \\+ body_layers 2 must equal num_layers 3"):
        small(body_layers=2)
    with pytest.raises(ConfigError, match="body_layers must be >= 1"):
        small(body_layers=0)


def test_needs_eos_mask():
    batch = dict.fromkeys(["input_ids", "labels", "position_ids", "document_ids"])
    with pytest.raises(ConfigError, match="lacks required key\\(s\\) \\['eos_mask'\\]"):
        select_inputs("gpthf", batch)
    with pytest.raises(ValueError, match="needs eos_mask"):
        build_model(small())(torch.zeros(1, 4, dtype=torch.long))


def test_body_sees_exactly_itself_and_earlier_eos():
    model = build_model(small(), seed=1)
    eos = torch.zeros(1, 12, dtype=torch.bool)
    eos[0, [2, 6, 7]] = True
    positions, documents = torch.arange(12)[None], torch.zeros(1, 12, dtype=torch.long)
    x = torch.randn(1, 12, 64, requires_grad=True)
    out = model.run_stack(BODY, x, positions, documents, eos)
    for i in range(12):
        (grad,) = torch.autograd.grad(out[0, i].sum(), x, retain_graph=True)
        seen = {j for j in range(12) if grad[0, j].abs().sum() > 0}
        assert seen == {i} | {j for j in (2, 6, 7) if j <= i}, i


def test_two_sentence_example_by_hand():
    """Logits of "a b EOS | c d" = body over (EOS embedding, own encoder output) of each sentence alone."""
    model = build_model(small(), seed=2).eval()
    ids = torch.tensor([[10, 11, EOS, 12, 13]])
    eos = ids == EOS
    with torch.no_grad():
        full = model(ids, eos_mask=eos).logits
        # The encoder sees one sentence at a time, at its global positions.
        first = model.run_stack(ENCODER, model.embed(ids[:, :3]), torch.arange(3)[None], torch.zeros(1, 3).long(),
                                eos[:, :3])
        second = model.run_stack(ENCODER, model.embed(ids[:, 3:]), torch.arange(3, 5)[None], torch.zeros(1, 2).long(),
                                 eos[:, 3:])
        for i in range(3):  # sentence 1: the body sees only the token itself
            own = model.run_stack(BODY, first[:, i:i + 1], torch.tensor([[i]]), torch.zeros(1, 1).long(),
                                  eos[:, i:i + 1])
            torch.testing.assert_close(model.lm_logits(own)[0, 0], full[0, i], atol=1e-5, rtol=1e-5)
        for i in (3, 4):  # sentence 2: the body sees the sentence-1 embedding (encoder output at its EOS) and itself
            pair = torch.stack([first[0, 2], second[0, i - 3]])[None]
            out = model.run_stack(BODY, pair, torch.tensor([[2, i]]), torch.zeros(1, 2).long(),
                                  torch.tensor([[True, False]]))
            torch.testing.assert_close(model.lm_logits(out)[0, 1], full[0, i], atol=1e-5, rtol=1e-5)


def test_padding_and_packed_documents_change_nothing():
    model = build_model(small(), seed=3).eval()
    doc = torch.tensor([[5, 6, EOS, 7, 8, EOS, 9]])
    labels = doc.roll(-1, 1)
    labels[0, -1] = -100
    with torch.no_grad():
        alone = model(doc, eos_mask=doc == EOS, labels=labels)
        ids = torch.cat([doc, torch.tensor([[20, EOS, 21, 0, 0]])], dim=1)
        packed = model(ids, position_ids=torch.tensor([list(range(7)) + [0, 1, 2, 0, 0]]),
                       document_ids=torch.tensor([[0] * 7 + [1] * 3 + [-1] * 2]), eos_mask=ids == EOS,
                       labels=torch.cat([labels, torch.full((1, 5), -100)], dim=1))
    torch.testing.assert_close(packed.logits[:, :7], alone.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed.loss, alone.loss)
    assert int(packed.num_labels) == 6


def test_flops_match_flop_counter():
    config = small()
    model = build_model(config)
    ids = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    with flop_counter_mode() as counter:
        model(ids, eos_mask=ids % 7 == 0, labels=ids).loss_sum.backward()
    assert counter.get_total_flops() / ids.numel() == pytest.approx(gpthf_flops.flops_per_token(config, 64), rel=0.05)
    # One generated token: encoder over its sentence so far (4 + 1 keys), body over 2 sentences + itself.
    model.eval()
    with torch.no_grad():
        prompt = [[5, 6, EOS, 7, EOS]]
        caches = SentenceCaches(model, 1, 16)
        caches.add_sentences(encode_finished(model, prompt, EOS, 0))
        caches.feed(torch.tensor([[8, 9, 10, 11]]), torch.arange(5, 9)[None], torch.tensor([4]), EOS)
        with flop_counter_mode() as counter:
            caches.feed(torch.tensor([[12]]), torch.tensor([[9]]), torch.tensor([1]), EOS)
    assert counter.get_total_flops() == pytest.approx(gpthf_flops.decode_flops(config, sentence_len=5, sentences=2), rel=0.05)


def test_saved_config_that_does_not_match_the_weights_is_refused(tmp_path):
    build_model(small()).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "encoder_layers": 1, "body_layers": 2}))
    pretrained.seal(tmp_path)  # as if written so: past the digests, to the tensor check
    with pytest.raises(ValueError, match=r"missing tensors \['body.layers.1.*unexpected tensors \['encoder.layers.1"):
        load_pretrained(tmp_path)
    path.write_text(json.dumps(saved))
    pretrained.seal(tmp_path)
    reloaded = load_pretrained(tmp_path)
    ids = torch.tensor([[1, 2, EOS, 4]])
    with torch.no_grad():
        a = gather_logits(reloaded(ids, eos_mask=ids == EOS).logits, 512)
        b = gather_logits(build_model(small())(ids, eos_mask=ids == EOS).logits, 512)
    assert torch.equal(a, b)
