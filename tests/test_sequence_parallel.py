"""Sequence parallelism (``parallel.sequence_parallel``): TP=2 with the sequence split over the
two ranks (real gloo processes) equals one process without it, for every mask kind, within
1e-4 (logits, loss, every gradient), and each rank keeps fewer bytes for backward; with TP=1
it is a warning, not a silent no-op. Through the trainer: tests/test_compile.py."""

import pytest
import torch
from distributed_helpers import REPO_ROOT, run_torchrun
from workers.sequence_parallel import cases, run_case

from megacompress.models.outputs import gather_logits
from megacompress.training.config import from_dict

WORKER = REPO_ROOT / "tests" / "workers" / "sequence_parallel.py"


def assert_close(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4, msg=lambda m: f"{what}: {m}")


@pytest.mark.distributed
def test_tp2_with_sequence_parallel_equals_one_process(tmp_path):
    run_torchrun(WORKER, 2, ["--out", str(tmp_path)], timeout=240)
    for name, (config, batch, recompute) in cases().items():
        model, out, _ = run_case(config, batch, recompute, sequence_parallel=False)
        for rank in range(2):
            res = torch.load(tmp_path / f"rank{rank}.pt")[name]
            where = f"{name}, rank {rank}"
            assert_close(res["logits"], gather_logits(out.logits, config.vocab_size).detach(), f"{where}: logits")
            assert_close(res["loss"], out.loss.detach(), f"{where}: loss")
            assert res["saved_bytes"] < res["saved_bytes_without"], f"{where}: the sequence was not split"
            for param, p in model.named_parameters():
                expected = p.grad[:config.vocab_size] if param == "embed.weight" else p.grad
                assert_close(res["grads"][param], expected, f"{where}: grad of {param}")


def test_sequence_parallel_without_tensor_parallelism_warns():
    with pytest.warns(UserWarning, match="parallel.sequence_parallel has no effect"):
        from_dict({"parallel": {"sequence_parallel": True}})
