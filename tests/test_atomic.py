"""Files a team can share: atomic writes honour the umask; our checkpoint files never unpickle objects."""

import os
import random
import stat

import numpy as np
import pytest
import torch

from megacompress.atomic import write_text_atomic
from megacompress.training.checkpoint import CheckpointError, _load_rng
from megacompress.training.rng import get_rng_state, set_rng_state


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_write_honours_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "meta.json", "{}")
        with open(tmp_path / "plain.json", "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "meta.json").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == mode
    assert not list(tmp_path.glob(".*.tmp"))


def test_exported_model_files_are_readable_by_the_team(tmp_path):
    from megacompress.models import GPT, ModelConfig

    old = os.umask(0o022)
    try:
        GPT(ModelConfig(vocab_size=100, hidden_size=32, num_layers=1, num_heads=2, ffn_hidden_size=64,
                        max_seq_len=16)).save_pretrained(tmp_path)
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors"):  # safetensors writes a new file itself
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    torch.save(get_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    set_rng_state(_load_rng(tmp_path / "rng.pt"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


class Payload:
    pass


def test_rng_file_with_objects_is_refused(tmp_path):
    torch.save({"python": Payload()}, tmp_path / "rng_rank00000.pt")
    with pytest.raises(CheckpointError, match="rng_rank00000.pt: not a megacompress RNG state"):
        _load_rng(tmp_path / "rng_rank00000.pt")
