"""Single-process GPT checks: packed documents equal separate runs, blocks, save/load."""

import json

import pytest
import torch

from megacompress.models import pretrained
from megacompress.models.blocks import RMSNorm
from megacompress.models.config import ConfigError, ModelConfig
from megacompress.models.gpt import GPT
from megacompress.models.rotary import RotaryEmbedding, apply_rotary


def config(**overrides) -> ModelConfig:
    base = dict(vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                ffn_hidden_size=96, max_seq_len=32)
    return ModelConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def model():
    return GPT(config(), seed=3)


def test_packed_documents_equal_separate_runs(model):
    """Document masking + restarting positions: a packed, padded row computes each document
    exactly as if it were alone (and padding changes nothing)."""
    gen = torch.Generator().manual_seed(1)
    doc_a, doc_b = torch.randint(0, 300, (1, 6), generator=gen), torch.randint(0, 300, (1, 9), generator=gen)
    packed = torch.cat([doc_a, doc_b, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    document_ids = torch.tensor([[0] * 6 + [1] * 9 + [-1] * 3])
    position_ids = torch.tensor([list(range(6)) + list(range(9)) + [0] * 3])
    labels = torch.roll(packed, -1, 1)
    labels[0, 5] = labels[0, 14:] = -100
    with torch.no_grad():
        out = model(packed, position_ids, document_ids, labels=labels)
        alone_a, alone_b = model(doc_a).logits, model(doc_b).logits
        la = model(doc_a, labels=torch.cat([doc_a[:, 1:], torch.tensor([[-100]])], 1)).loss
        lb = model(doc_b, labels=torch.cat([doc_b[:, 1:], torch.tensor([[-100]])], 1)).loss
    torch.testing.assert_close(out.logits[:, :6], alone_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits[:, 6:15], alone_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, (5 * la + 8 * lb) / 13, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(out.logits).all()


def test_padded_vocab_logits_excluded(model):
    ids = torch.tensor([[1, 2, 3]])
    out = model(ids, labels=torch.tensor([[2, 3, -100]]))
    assert out.logits.shape == (1, 3, 384)
    full = out.logits[..., :300].log_softmax(-1)
    expected = -(full[0, 0, 2] + full[0, 1, 3]) / 2
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.embed.weight.grad[300:].abs().max() == 0  # padding rows never learn


def test_rotary_is_relative():
    rope = RotaryEmbedding(16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(pq, pk):
        cq, sq = rope(torch.tensor([[pq]]), torch.float32)
        ck, sk = rope(torch.tensor([[pk]]), torch.float32)
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    torch.testing.assert_close(score(7, 3), score(107, 103), rtol=1e-4, atol=1e-5)


def test_rmsnorm():
    norm = RMSNorm(8, eps=0.0)
    x = torch.randn(3, 8)
    torch.testing.assert_close(norm(x).pow(2).mean(-1), torch.ones(3))


def test_init_is_seeded():
    a, b, c = GPT(config(), seed=1), GPT(config(), seed=1), GPT(config(), seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.embed.weight, c.embed.weight)


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "manifest.json", "model.safetensors"]
    loaded = GPT.from_pretrained(tmp_path)
    ids = torch.tensor([[4, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_load_errors_name_file_and_keys(model, tmp_path):
    model.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"config.json: model config differs in hidden_size \(saved 64, expected 128\)"):
        GPT.from_pretrained(tmp_path, config=config(hidden_size=128))
    # Weights of another shape under the same config: error names the file and tensors.
    GPT(config(ffn_hidden_size=128)).save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text((tmp_path / "config.json").read_text())
    pretrained.seal(tmp_path / "other")  # as its author wrote it: past the digests, to the shape check
    with pytest.raises(ValueError, match=r"other/model.safetensors: does not match the model: "
                                         r"stack.layers.0.mlp.down.weight: shape \(64, 128\)"):
        GPT.from_pretrained(tmp_path / "other")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["n_layer"] = 2
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    pretrained.seal(tmp_path)
    with pytest.raises(ConfigError, match="config.json: unknown ModelConfig key"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "other" / "model.safetensors").write_bytes(b"garbage")
    pretrained.seal(tmp_path / "other")
    with pytest.raises(ValueError, match="model.safetensors: cannot read"):
        GPT.from_pretrained(tmp_path / "other")
