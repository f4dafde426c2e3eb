"""Activation recompute (``parallel.recompute``) changes no number: a GPTHF (two stacks) trained
with TP=2 and ZeRO-1 on real processes logs the same losses and gradient norms with ``full``
and ``selective`` as with ``none`` (within 1e-5), and a bad mode is one config error."""

import json
import sys

import pytest
from distributed_helpers import free_port, run_checked
from test_gpthf_train import settings

from megacompress.training.config import TrainConfigError, from_dict


def _train(shards, run_dir, mode):
    overrides = [arg for s in [*settings(shards, run_dir), f"parallel.recompute={mode}", "logging.log_interval=1"]
                 for arg in ("--set", s)]
    run_checked([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
                 f"--master-port={free_port()}", "-m", "megacompress.train", *overrides], timeout=300)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in records if r["split"] == "train"]


@pytest.mark.distributed
def test_recompute_gives_the_same_losses_and_gradients(sample_shards, tmp_path):
    reference = _train(sample_shards, tmp_path / "none", "none")
    assert [step for step, _, _ in reference] == [1, 2, 3]
    for mode in ("full", "selective"):
        for (step, loss, norm), (_, ref_loss, ref_norm) in zip(_train(sample_shards, tmp_path / mode, mode), reference):
            assert loss == pytest.approx(ref_loss, abs=1e-5) and norm == pytest.approx(ref_norm, abs=1e-5), (mode, step)


def test_a_bad_mode_is_a_config_error():
    with pytest.raises(TrainConfigError, match="parallel.recompute must be none, full or selective"):
        from_dict({"parallel": {"recompute": "some"}})
