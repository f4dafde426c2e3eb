"""GPTHF at TP=2 (two gloo processes) equals TP=1: logits, loss, every gradient, and fast
generation (tokens and logits, which also equal a teacher-forced forward); weights saved at
TP=2 reload at TP=1."""

from types import SimpleNamespace

import pytest
import torch
from distributed_helpers import REPO_ROOT, run_torchrun
from workers.gpthf_common import EOS, PROMPTS, small_gpthf
from workers.gpthf_tp import batch, forward_and_generate

from megacompress.generation.uncached import teacher_forced_max_diff
from megacompress.models import load_pretrained
from megacompress.models.outputs import gather_logits

WORKER = REPO_ROOT / "tests" / "workers" / "gpthf_tp.py"


def assert_close(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{what}: {m}")


@pytest.mark.distributed
def test_gpthf_tp2_equals_tp1(tmp_path):
    run_torchrun(WORKER, 2, ["--out", str(tmp_path)], timeout=240)
    config = small_gpthf()
    model, out, reference = forward_and_generate(config)
    for rank in range(2):
        res = torch.load(tmp_path / f"rank{rank}.pt")
        assert_close(res["logits"], gather_logits(out.logits, config.vocab_size).detach(), f"rank {rank} logits")
        assert_close(res["loss"], out.loss.detach(), f"rank {rank} loss")
        for name, p in model.named_parameters():
            expected = p.grad[:config.vocab_size] if name == "embed.weight" else p.grad
            assert_close(res["grads"][name], expected, f"rank {rank} grad of {name}")
        assert res["tokens"] == reference.tokens
        assert teacher_forced_max_diff(model, PROMPTS, SimpleNamespace(**res), EOS) < 1e-4
    reloaded = load_pretrained(tmp_path / "pretrained")
    with torch.no_grad():
        assert_close(reloaded(**batch(config)).logits, model(**batch(config)).logits, "reloaded logits")
