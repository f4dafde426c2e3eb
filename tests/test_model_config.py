"""ModelConfig validation, presets, dict round trip; parameter/FLOPs formulas vs the real model."""

import dataclasses

import pytest
import torch

from megacompress.models.config import PRESETS, ConfigError, ModelConfig
from megacompress.models.flops import attended_fraction, count_parameters, flops_per_token, matmul_parameters
from megacompress.models.gpt import GPT


def small(**overrides) -> ModelConfig:
    base = dict(vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, ffn_hidden_size=96, max_seq_len=32)
    return ModelConfig(**{**base, **overrides})


@pytest.mark.parametrize("overrides, message", [
    (dict(hidden_size=66), "hidden_size 66 is not divisible by num_heads 4"),
    (dict(num_kv_heads=3), "num_heads 4 is not divisible by num_kv_heads 3"),
    (dict(num_layers=0), "num_layers must be a positive int"),
    (dict(hidden_size=12, num_heads=4), "head_dim 3 must be even"),
])
def test_invalid_configs_name_the_problem(overrides, message):
    with pytest.raises(ConfigError, match=message):
        small(**overrides)


def test_tp_constraints():
    config = small(num_heads=4, num_kv_heads=1)
    config.validate(tp_size=1)
    with pytest.raises(ConfigError, match="num_kv_heads 1 is not divisible by the tensor-parallel size 2"):
        config.validate(tp_size=2)
    assert config.padded_vocab_size(1) == 384 and config.padded_vocab_size(2) == 512
    assert ModelConfig.from_preset("baseline-12").padded_vocab_size(1) == 50304


def test_dict_round_trip_and_unknown_keys():
    config = small(num_kv_heads=2, tie_embeddings=False)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="'hiden_size' \\(did you mean 'hidden_size'\\?\\)"):
        ModelConfig.from_dict({**config.to_dict(), "hiden_size": 8})
    with pytest.raises(ConfigError, match="missing required key\\(s\\): max_seq_len"):
        ModelConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "max_seq_len"})
    with pytest.raises(ConfigError, match="unknown model preset 'gpt5'"):
        ModelConfig.from_preset("gpt5")


def test_presets():
    assert set(PRESETS) >= {"tiny", "baseline-12", "baseline-24"}
    b12 = ModelConfig.from_preset("baseline-12")
    assert (b12.hidden_size, b12.ffn_hidden_size, b12.num_heads, b12.num_layers, b12.max_seq_len,
            b12.vocab_size) == (768, 3072, 12, 12, 512, 50259)
    assert ModelConfig.from_preset("baseline-24").num_layers == 24


@pytest.mark.parametrize("overrides", [dict(), dict(num_kv_heads=2), dict(tie_embeddings=False)])
def test_param_count_matches_numel(overrides):
    config = small(**overrides)
    model = GPT(config)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(config).total
    # N of the FLOPs formula = every weight used in a matmul per token: the 2-D
    # parameters, with the (output) vocabulary table counted at its real size once.
    tables = {"embed.weight", "lm_head.weight"}
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and n not in tables)
    assert matmul_parameters(config) == matrices + config.vocab_size * config.hidden_size


def test_flops_formula():
    config = ModelConfig.from_preset("baseline-12")
    n = matmul_parameters(config)
    attention = 12 * 12 * 512 * 768
    assert flops_per_token(config) == 6 * n + attention
    assert flops_per_token(config, attention_fraction=0.5, training=False) == 2 * n + attention / 3 / 2
    causal = torch.ones(8, 8, dtype=torch.bool).tril()[None, None]
    assert attended_fraction(causal) == pytest.approx(36 / 64)
    with pytest.raises(ValueError, match="attention_fraction"):
        flops_per_token(config, attention_fraction=1.5)


def test_config_is_a_dataclass():
    assert {f.name for f in dataclasses.fields(ModelConfig)} >= {
        "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "ffn_hidden_size",
        "max_seq_len", "rope_theta", "norm_eps", "init_std", "tie_embeddings", "attention_backend"}
