"""The architecture registry: configs name a model class, the engine trains/exports/reloads any
registered class, and batch keys a model does not take are an error (not dropped)."""

import json
import sys

import pytest
from distributed_helpers import REPO_ROOT, cpu_env, run_checked

from megacompress.models import registry
from megacompress.models.config import ConfigError, ModelConfig
from megacompress.models.gpt import GPT

TINY = dict(vocab_size=259, hidden_size=32, num_layers=2, num_heads=2, ffn_hidden_size=64, max_seq_len=32)


def test_config_names_a_registered_architecture():
    assert ModelConfig(**TINY).architecture == "gpt"
    assert isinstance(registry.build_model(ModelConfig(**TINY)), GPT)
    with pytest.raises(ConfigError, match="architecture 'gpthf_typo' is not registered .*known: .*gpt"):
        ModelConfig(**TINY, architecture="gpthf_typo")
    old = {k: v for k, v in ModelConfig(**TINY).to_dict().items() if k != "architecture"}
    assert ModelConfig.from_dict(old).architecture == "gpt"  # config.json files from before the field


def test_select_inputs_refuses_undeclared_and_missing_keys():
    batch = {"input_ids": 1, "labels": 2, "eos_mask": 3}
    with pytest.raises(ConfigError, match=r"has key\(s\) \['eos_mask'\] that the model does not take"):
        registry.select_inputs("gpt", batch)
    with pytest.raises(ConfigError, match=r"lacks required key\(s\) \['input_ids'\]"):
        registry.select_inputs("gpt", {"labels": 2})
    assert registry.select_inputs("gpt", {"input_ids": 1, "labels": 2}) == {"input_ids": 1, "labels": 2}


def test_registration_errors():
    with pytest.raises(ValueError, match="already registered"):
        registry.register_architecture("gpt", inputs=("input_ids",), mask_kinds=("causal",))(type("Other", (), {}))
    with pytest.raises(ValueError, match="unknown mask kinds"):
        registry.register_architecture("x", inputs=("input_ids",), mask_kinds=("nope",))


def test_load_pretrained_checks_the_class(tmp_path):
    model = GPT(ModelConfig(**TINY))
    model.save_pretrained(tmp_path)
    assert type(registry.load_pretrained(tmp_path)) is GPT

    class Special(GPT):
        pass

    with pytest.raises(ConfigError, match="architecture 'gpt' is not a Special"):
        Special.from_pretrained(tmp_path)


@pytest.mark.distributed
def test_engine_trains_exports_and_reloads_any_registered_class(sample_shards, tmp_path):
    common = ";".join([f"model.{k}={v}" for k, v in TINY.items()] + [
        "tokenizer.kind=bytes", f"data.data_path=[{sample_shards['train']}]", "data.kind=document",
        f"eval.data_path=[{sample_shards['valid']}]", "eval.iters=1", "schedule.train_steps=3",
        "schedule.warmup_steps=1", "schedule.global_batch_size=4", "schedule.micro_batch_size=2",
        "parallel.zero_stage=1", "logging.progress_bar=false"])
    run_checked([sys.executable, str(REPO_ROOT / "tests" / "workers" / "custom_architecture.py"),
                 "--out", str(tmp_path), "--common", common], env=cpu_env(), timeout=240)
    result = json.loads((tmp_path / "result.json").read_text())
    assert len(result["losses"]) == 3 and result["seen_eos"] > 0
    assert result["reloaded_class"] == "SentenceProbe" and result["architecture"] == "sentence_probe"
    assert result["same_logits"]
    assert "['eos_mask'] that the model does not take" in result["gpt_error"]


LEGACY_FIELDS = {"encoder_layers": 0, "body_layers": 0, "gist_tokens": 0, "gist_variant": "gist"}


@pytest.mark.parametrize("preset, method_fields", [
    ("tiny", {}),
    ("tiny-gpthf", {"encoder_layers": 2, "body_layers": 1}),
    ("tiny", {"architecture": "gist", "gist_tokens": 2, "gist_variant": "neg_control"}),
])
def test_config_json_from_before_the_per_method_split_still_loads(preset, method_fields):
    """config.json / checkpoint manifests written when ModelConfig held every method's fields:
    another method's field at its old default is dropped; the config is that architecture's class."""
    from megacompress.training.checkpoint import _with_defaults

    current = ModelConfig.from_dict({**ModelConfig.from_preset(preset).to_dict(), **method_fields})
    old = {**current.to_dict(), **LEGACY_FIELDS, **method_fields}
    assert ModelConfig.from_dict(old) == current and type(ModelConfig.from_dict(old)) is type(current)
    assert _with_defaults(old) == current.to_dict()
    with pytest.raises(ConfigError, match="unknown ModelConfig key"):
        ModelConfig.from_dict({**current.to_dict(), "gist_tokens": 3} if "gist_tokens" not in method_fields
                              else {**current.to_dict(), "encoder_layers": 3})
