"""Training config loading, overrides, DeepSpeed config derivation and schedules (no processes)."""

import json

import pytest

from megacompress.training.config import TrainConfigError, load_config
from megacompress.training.ds_config import DS_CONFIG_DIR, DERIVED_KEYS, build_ds_config
from megacompress.training.schedules import BatchSizeRamp, learning_rate

SHORT = ["schedule.train_steps=10", "schedule.warmup_steps=2"]


def test_yaml_and_typed_overrides(repo_root):
    config = load_config(repo_root / "configs" / "tiny_gpt.yaml",
                         ["optimizer.lr=3e-4", "model.hidden_size=128", "data.data_path=[a, b]",
                          "checkpoint.resume=false", "data.cache_dir=none"])
    assert config.optimizer.lr == 3e-4 and isinstance(config.optimizer.lr, float)
    assert config.model.build().hidden_size == 128
    assert config.data.data_path == ["a", "b"] and config.data.cache_dir is None
    assert config.checkpoint.resume is False
    assert config.to_dict()["model"] == {"preset": "tiny", "hidden_size": 128}


@pytest.mark.parametrize("override, message", [
    ("optimzer.lr=1", "unknown config key 'optimzer.lr' (did you mean 'optimizer.lr'?)"),
    ("model.hiden_size=3", "did you mean 'model.hidden_size'?"),
    ("schedule.train_steps=abc", "config key 'schedule.train_steps' expects int, got 'abc'"),
    ("schedule.warmup_steps=-1", "schedule.warmup_steps must be >= 0"),
    ("parallel.zero_stage=4", "parallel.zero_stage must be 0, 1, 2 or 3"),
    ("lr", "is not of the form section.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(TrainConfigError) as info:
        load_config(None, SHORT + [override])
    assert message in str(info.value)


def test_warmup_longer_than_the_run_is_clamped_with_a_warning():
    """A short run of a config (`--set schedule.train_steps=5` with warmup 20) just works."""
    with pytest.warns(UserWarning, match="schedule.warmup_steps=20 is longer than schedule.train_steps=5"):
        config = load_config(None, ["schedule.train_steps=5", "schedule.warmup_steps=20"])
    assert config.schedule.warmup_steps == 5


def test_unknown_yaml_key_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("schedule:\n  train_step: 3\n")
    with pytest.raises(TrainConfigError, match=r"bad.yaml: unknown config key 'schedule.train_step'"):
        load_config(path)


def test_ds_config_batch_sizes_are_derived():
    config = load_config(None, SHORT + ["schedule.global_batch_size=16", "schedule.micro_batch_size=2",
                                        "parallel.zero_stage=3"])
    ds = build_ds_config(config, dp_size=2, on_gpu=False)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) \
        == (16, 2, 4)
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] is False
    assert ds["gradient_clipping"] == 0.5
    assert build_ds_config(config, dp_size=2, on_gpu=True)["bf16"]["enabled"] is True
    with pytest.raises(TrainConfigError, match="not a positive multiple of micro batch size 2 x data-parallel size 3"):
        build_ds_config(config, dp_size=3, on_gpu=False)


def test_templates_never_set_derived_keys():
    for path in DS_CONFIG_DIR.glob("*.json"):
        assert not set(json.loads(path.read_text())) & set(DERIVED_KEYS), path


def test_template_stage_must_agree(repo_root):
    config = load_config(None, SHORT + [f"parallel.ds_config={repo_root}/ds_configs/zero3_offload.json"])
    with pytest.raises(TrainConfigError, match="uses ZeRO stage 3 but parallel.zero_stage is 2"):
        build_ds_config(config, dp_size=1, on_gpu=False)


def test_learning_rate_shape():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=4, train_steps=14)
    assert [learning_rate(s, decay="linear", **kw) for s in (0, 3)] == [0.25, 1.0]
    assert learning_rate(9, decay="linear", **kw) == pytest.approx(0.55)
    assert learning_rate(9, decay="cosine", **kw) == pytest.approx(0.55)
    assert learning_rate(14, decay="cosine", **kw) == pytest.approx(0.1)
    assert learning_rate(100, decay="linear", **kw) == pytest.approx(0.1)


def test_batch_size_ramp():
    ramp = BatchSizeRamp(start=64, peak=4096, ramp_steps=60, unit=64)
    sizes = [ramp(s) for s in range(80)]
    assert sizes[0] == 64 and sizes[60] == 4096 and sizes[-1] == 4096
    assert all(a <= b for a, b in zip(sizes, sizes[1:])) and all(s % 64 == 0 for s in sizes)
    assert BatchSizeRamp(0, 32, 10, 4)(0) == 32
    with pytest.raises(ValueError, match="multiples of micro batch x data-parallel size = 48"):
        BatchSizeRamp(64, 4096, 60, 48)
