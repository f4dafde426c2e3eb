"""Activation recompute (``parallel.recompute``) changes no number: a GPTHF (two stacks) trained
with TP=2 and ZeRO-1 on real processes logs the same losses and gradient norms with ``full``
and ``selective`` as with ``none`` (within 1e-5), and a bad mode is one config error."""

import pytest
from test_gpthf_train import train_losses

from megacompress.training.config import TrainConfigError, from_dict


@pytest.mark.distributed
def test_recompute_gives_the_same_losses_and_gradients(sample_shards, tmp_path):
    reference = train_losses(sample_shards, tmp_path / "none")
    assert [step for step, _, _ in reference] == [1, 2, 3]
    for mode in ("full", "selective"):
        logged = train_losses(sample_shards, tmp_path / mode, f"parallel.recompute={mode}")
        for (step, loss, norm), (_, ref_loss, ref_norm) in zip(logged, reference):
            assert loss == pytest.approx(ref_loss, abs=1e-5) and norm == pytest.approx(ref_norm, abs=1e-5), (mode, step)


def test_a_bad_mode_is_a_config_error():
    with pytest.raises(TrainConfigError, match="parallel.recompute must be none, full or selective"):
        from_dict({"parallel": {"recompute": "some"}})
