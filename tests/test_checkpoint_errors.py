"""Checkpoint verification: corrupt, incomplete and mismatched checkpoints give named errors."""

import pytest

from megacompress.atomic import write_text_atomic
from megacompress.models.config import ModelConfig
from megacompress.training.checkpoint import (CheckpointError, CheckpointManager, TrainState, read_latest,
                                              read_manifest, write_manifest)

TINY = ModelConfig.from_preset("tiny").to_dict()


@pytest.fixture
def ckpt(tmp_path):
    root = tmp_path / "checkpoints"
    tag_dir = root / "global_step7"
    tag_dir.mkdir(parents=True)
    (tag_dir / "mp_rank_00_model_states.pt").write_bytes(b"x" * 100)
    (tag_dir / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"y" * 50)
    write_manifest(tag_dir, state=TrainState(7, 56, 7168), model_config=TINY, train_config={})
    write_text_atomic(root / "latest", "global_step7")
    return root


def test_intact_checkpoint_verifies(ckpt):
    assert read_latest(ckpt) == "global_step7"
    assert read_manifest(ckpt / "global_step7")["train_state"] == {"step": 7, "consumed_samples": 56,
                                                                   "tokens_seen": 7168}


def test_truncated_file_is_named(ckpt):
    path = ckpt / "global_step7" / "mp_rank_00_model_states.pt"
    path.write_bytes(b"x" * 10)
    with pytest.raises(CheckpointError, match=f"{path} is corrupt: 10 bytes, expected 100"):
        read_manifest(ckpt / "global_step7")


def test_missing_rank_file_is_named(ckpt):
    path = ckpt / "global_step7" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    path.unlink()
    with pytest.raises(CheckpointError, match=f"checkpoint file {path} is missing"):
        read_manifest(ckpt / "global_step7")


def test_uncommitted_checkpoint_is_refused(ckpt):
    (ckpt / "global_step7" / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete or not ours"):
        read_manifest(ckpt / "global_step7")


def test_dangling_latest_is_named(ckpt):
    write_text_atomic(ckpt / "latest", "global_step9")
    with pytest.raises(CheckpointError, match="points to 'global_step9'"):
        read_latest(ckpt)


def test_different_model_config_lists_keys(ckpt):
    other = ModelConfig.from_preset("tiny", hidden_size=128, num_layers=3).to_dict()
    with pytest.raises(CheckpointError) as info:
        CheckpointManager(ckpt).load(None, ckpt, "global_step7", model_config=other)
    message = str(info.value)
    assert "different model config" in message
    assert "hidden_size: 64 -> 128" in message and "num_layers: 2 -> 3" in message
