"""A resume may not silently change the run: run-defining keys are compared with the
checkpoint's training config, and a resumed LR follows the configured schedule.

The checks run before DeepSpeed loads anything, so most tests use a manifest-only
checkpoint; one launch checks the real trainer (refusal, override, LR of every step).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from distributed_helpers import REPO_ROOT, cpu_env, run_checked
from test_training_distributed import common, load

from megacompress.models.config import ModelConfig
from megacompress.training.checkpoint import (CheckpointError, CheckpointManager, TrainState, changed_keys,
                                               write_manifest)
from megacompress.training.config import TrainConfigError, load_config

WORKER = REPO_ROOT / "tests" / "workers" / "resume_runs.py"
MODEL = ModelConfig.from_preset("tiny").to_dict()
SAVED = ["data.data_path=[shards/a]", "seed=1234", "schedule.train_steps=4", "schedule.warmup_steps=1",
         "parallel.zero_stage=2"]
TAG = "global_step4"


class LoadingEngine:
    """Stands in for a DeepSpeed engine once the checks have passed."""

    def __init__(self, precision: str = "fp32"):
        self.precision = precision

    def bfloat16_enabled(self):
        return self.precision == "bf16"

    def fp16_enabled(self):
        return self.precision == "fp16"

    def load_checkpoint(self, load_dir, **kwargs):
        return load_dir, {}


@pytest.fixture
def ckpt(tmp_path):
    """A checkpoint root whose manifest records the run configured by ``SAVED``."""
    tag_dir = tmp_path / "checkpoints" / TAG
    tag_dir.mkdir(parents=True)
    write_manifest(tag_dir, state=TrainState(4, 16, 0), model_config=MODEL,
                   train_config=load_config(None, SAVED).to_dict())
    return tag_dir.parent


def resume(root: Path, overrides: list[str], universal: bool = False) -> TrainState:
    config = load_config(None, SAVED + overrides)
    state, _ = CheckpointManager(root).load(LoadingEngine(), root, TAG, model_config=MODEL,
                                            train_config=config.to_dict(), universal=universal)
    return state


@pytest.mark.parametrize("override, change", [
    ("seed=7", "seed: 1234 -> 7"),
    ("data.data_path=[shards/b]", "data.data_path: ['shards/a'] -> ['shards/b']"),
    ("parallel.tensor_parallel_size=2", "parallel.tensor_parallel_size: 1 -> 2"),
    ("schedule.train_steps=6", "schedule.train_steps: 4 -> 6"),
    ("tokenizer.kind=bytes", "tokenizer.kind: 'gpt2' -> 'bytes'"),
    ("parallel.zero_stage=1", "parallel.zero_stage: 2 -> 1"),
])
def test_changed_run_key_is_refused_by_name(ckpt, override, change):
    key = change.split(":")[0]
    with pytest.raises(CheckpointError) as info:
        resume(ckpt, [override])
    message = str(info.value)
    assert f"checkpoint {ckpt / TAG} was saved by a run with a different training config: {change}." in message
    assert f"--set checkpoint.allow_changes=[{key}]" in message


def test_reporting_and_location_keys_never_block(ckpt, tmp_path):
    state = resume(ckpt, [f"logging.run_dir={tmp_path}/elsewhere", "eval.interval=2", "eval.iters=9",
                          "checkpoint.interval=1", "checkpoint.keep_last=5", "data.cache_dir=/tmp/cache"])
    assert state == TrainState(4, 16, 0)


def test_a_path_given_relative_or_absolute_is_one_value(ckpt, monkeypatch):
    monkeypatch.chdir(ckpt)  # the saved run named shards/a from here
    resume(ckpt, [f"data.data_path=[{ckpt / 'shards' / 'a'}]"])
    with pytest.raises(CheckpointError, match=r"data.data_path: \['shards/a'\] -> \['/"):
        resume(ckpt, [f"data.data_path=[{ckpt.parent / 'shards' / 'a'}]"])
    assert changed_keys({"data.data_path": ["0.5", "a", "0.5", "b"]},
                        {"data.data_path": ["0.5", "a", "0.25", "b"]}) == ["data.data_path"]


def test_allow_changes_takes_keys_and_sections(ckpt):
    resume(ckpt, ["schedule.train_steps=6", "checkpoint.allow_changes=[schedule.train_steps]"])
    resume(ckpt, ["data.data_path=[shards/b]", "data.seed=5", "checkpoint.allow_changes=[data]"])
    with pytest.raises(CheckpointError, match=r"data.seed: 1234 -> 5\. .*allow_changes=\[data.seed\]"):
        resume(ckpt, ["data.data_path=[shards/b]", "data.seed=5", "checkpoint.allow_changes=[data.data_path]"])


def test_optimizer_implementation_is_not_run_defining(tmp_path, ckpt):
    resume(ckpt, ["optimizer.implementation=for-loop"])  # the same run, computed another way
    tag_dir = tmp_path / "older" / TAG  # saved before the key existed
    tag_dir.mkdir(parents=True)
    saved = load_config(None, SAVED).to_dict()
    del saved["optimizer"]["implementation"]
    write_manifest(tag_dir, state=TrainState(4, 16, 0), model_config=MODEL, train_config=saved)
    assert resume(tag_dir.parent, []).step == 4


def test_allow_changes_names_known_keys():
    with pytest.raises(TrainConfigError, match=r"checkpoint.allow_changes: unknown config key 'schedule.train_step' "
                                               r"\(did you mean 'schedule.train_steps'\?\)"):
        load_config(None, ["checkpoint.allow_changes=[schedule.train_step]"])


def test_tensor_parallel_change_needs_a_universal_checkpoint(ckpt):
    allowed = ["parallel.tensor_parallel_size=2", "checkpoint.allow_changes=[parallel.tensor_parallel_size]"]
    with pytest.raises(CheckpointError, match="cannot be loaded with tensor_parallel_size 1 -> 2: convert it with "
                                              "`python tools/convert_checkpoint.py to-universal`"):
        resume(ckpt, allowed)
    with pytest.raises(CheckpointError, match=r"cannot be resharded \(tensor_parallel_size 1 -> 2\): it was converted "
                                              "from a checkpoint saved without"):
        resume(ckpt, allowed, universal=True)  # this manifest has no universal_checkpoint_info


def test_tensor_parallel_change_is_refused_under_zero3(tmp_path):
    tag_dir = tmp_path / TAG
    tag_dir.mkdir()
    write_manifest(tag_dir, state=TrainState(4, 16, 0), model_config=MODEL,
                   train_config=load_config(None, ["parallel.zero_stage=3"]).to_dict(),
                   extra={"universal": True, "universal_checkpoint_info": {"universal_checkpoint_version": 0.4}})
    config = load_config(None, ["parallel.zero_stage=3", "parallel.tensor_parallel_size=2",
                                "checkpoint.allow_changes=[parallel.tensor_parallel_size]"])
    with pytest.raises(CheckpointError, match=r"cannot be resharded \(tensor_parallel_size 1 -> 2\) under ZeRO-3"):
        CheckpointManager(tmp_path).load(LoadingEngine(), tmp_path, TAG, model_config=MODEL,
                                         train_config=config.to_dict(), universal=True)


def test_precision_change_needs_a_universal_checkpoint_and_allow_changes(tmp_path):
    """DeepSpeed keeps a bf16 run's optimizer state in other files than an fp32 run's: a plain
    resume across the two fails inside DeepSpeed, a universal one loads but changes the run."""
    for name in ("plain", "universal"):
        tag_dir = tmp_path / name / TAG
        tag_dir.mkdir(parents=True)
        write_manifest(tag_dir, state=TrainState(4, 16, 0), model_config=MODEL,
                       train_config=load_config(None, SAVED).to_dict(), extra={"precision": "bf16"})

    def load_in(name, engine_precision, overrides=(), universal=False):
        config = load_config(None, SAVED + list(overrides)).to_dict()
        return CheckpointManager(tmp_path / name).load(LoadingEngine(engine_precision), tmp_path / name, TAG,
                                                       model_config=MODEL, train_config=config, universal=universal)

    load_in("plain", "bf16")
    allowed = ["checkpoint.allow_changes=[parallel.precision]"]
    with pytest.raises(CheckpointError, match=r"global_step4 was saved by a bf16 run and this run computes in fp32: "
                                              r".*--set parallel.precision=bf16, or convert it with `python tools/"
                                              r"convert_checkpoint.py to-universal`"):
        load_in("plain", "fp32", allowed)
    with pytest.raises(CheckpointError, match=r"universal checkpoint .*global_step4 was saved by a bf16 run and "
                                              r"this run computes in fp32; .*allow_changes=\[parallel.precision\]"):
        load_in("universal", "fp32", universal=True)
    assert load_in("universal", "fp32", allowed, universal=True)[0] == TrainState(4, 16, 0)
    assert load_in("universal", "bf16", universal=True)[0] == TrainState(4, 16, 0)


@pytest.mark.distributed
def test_resume_with_changed_train_steps(sample_shards, tmp_path):
    """4 steps, then resumed to 6: refused without the override; with it, the LR of steps 5-6
    equals a fresh 6-step run's (the saved scheduler state would keep the 4-step shape)."""
    run, fresh = f"logging.run_dir={tmp_path}/run", f"logging.run_dir={tmp_path}/fresh"
    jobs = {"first": [run, "schedule.train_steps=4"], "refused": [run, "schedule.train_steps=6"],
            "extended": [run, "schedule.train_steps=6", "checkpoint.allow_changes=[schedule.train_steps]"],
            "fresh": [fresh, "schedule.train_steps=6"]}
    args = [f"{name}={';'.join(spec)}" for name, spec in jobs.items()]
    run_checked([sys.executable, str(WORKER), str(tmp_path), common(sample_shards), *args], env=cpu_env(), timeout=240)

    assert "schedule.train_steps: 4 -> 6" in load(tmp_path, "refused")["error"]
    extended, six = load(tmp_path, "extended"), load(tmp_path, "fresh")
    assert extended["steps"] == [5, 6]
    assert extended["lrs"] == six["lrs"][4:]
    assert load(tmp_path, "first")["lrs"][:3] != six["lrs"][:3]  # the two schedules differ
