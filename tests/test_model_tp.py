"""GPT at TP=2 (two real gloo processes) equals TP=1: logits, loss, gradients, generation,
and weights saved at TP=2 reload at TP=1 with the same logits."""

import pytest
import torch
from distributed_helpers import REPO_ROOT, run_torchrun
from workers.model_common import make_batch, small_config

from megacompress.generation.generate import generate
from megacompress.generation.sampling import SamplingConfig
from megacompress.models.gpt import GPT
from megacompress.models.outputs import gather_logits

WORKER = REPO_ROOT / "tests" / "workers" / "model_tp.py"


def assert_close(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=lambda m: f"{what}: {m}")


@pytest.mark.distributed
def test_tp2_equals_tp1(tmp_path):
    run_torchrun(WORKER, 2, ["--out", str(tmp_path)], timeout=240)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    config = small_config()
    model = GPT(config, seed=7)
    out = model(**make_batch(config))
    out.loss.backward()
    ref_logits = gather_logits(out.logits, config.vocab_size).detach()
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6], [9]]
    greedy = generate(model, prompts, 5).tokens
    sampled = generate(model, prompts, 5, sampling=SamplingConfig(temperature=1.0, top_k=20, seed=3)).tokens

    for rank, res in enumerate(ranks):
        assert_close(res["logits"], ref_logits, f"rank {rank} logits")
        assert_close(res["loss"], out.loss.detach(), f"rank {rank} loss")
        for name, p in model.named_parameters():
            expected = p.grad[:config.vocab_size] if name == "embed.weight" else p.grad
            assert_close(res["grads"][name], expected, f"rank {rank} grad of {name}")
            full = p.detach()[:config.vocab_size] if name == "embed.weight" else p.detach()
            assert torch.equal(res["weights"][name], full), f"rank {rank}: init of {name} depends on TP"
        assert res["greedy"] == greedy
        assert res["sampled"] == sampled

    # Saved at TP=2, loaded at TP=1 (resharded): same logits as the TP=1 model.
    reloaded = GPT.from_pretrained(tmp_path / "pretrained", config=config)
    with torch.no_grad():
        logits = gather_logits(reloaded(**make_batch(config)).logits, config.vocab_size)
    assert_close(logits, ref_logits, "reloaded logits")
