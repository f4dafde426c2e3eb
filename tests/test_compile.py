"""Compiled blocks (``parallel.compile``): every mask kind's model compiled with inductor, also
under full and selective recompute, has no graph break and gives eager's loss and gradients
(within 1e-4). Through the trainer (TP=2, ZeRO-1, real processes), sequence parallelism and then
compiled blocks on top log the losses and gradient norms of TP=2 without either (within 1e-4)."""

import shutil

import pytest
import torch
from torch._dynamo.utils import counters
from test_gpthf_train import train_losses
from workers.sequence_parallel import cases

from megacompress.models.registry import build_model
from megacompress.training.compile import apply_compile
from megacompress.training.recompute import apply_recompute

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="inductor on CPU needs a C++ compiler (Debian's g++)")


def _loss_and_grads(config, batch, recompute, compiled):
    model = build_model(config, seed=4)
    apply_compile(model, compiled)
    apply_recompute(model, recompute)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


def test_compiled_blocks_have_no_graph_break_and_equal_eager():
    every = cases()
    every["gpthf_selective_recompute"] = (*every["gpthf"][:2], "selective")
    for name, (config, batch, recompute) in every.items():
        torch._dynamo.reset()  # each case compiles its own graphs, counted alone
        counters.clear()
        loss, grads = _loss_and_grads(config, batch, recompute, compiled=True)
        assert counters["stats"]["unique_graphs"] >= 1 and dict(counters["graph_break"]) == {}, name
        ref_loss, ref_grads = _loss_and_grads(config, batch, recompute, compiled=False)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: loss {m}")
        for param, grad in ref_grads.items():
            torch.testing.assert_close(grads[param], grad, rtol=1e-4, atol=1e-4,
                                       msg=lambda m: f"{name}: grad of {param}: {m}")


@pytest.mark.distributed
def test_training_sequence_parallel_and_compiled_log_the_same_losses(sample_shards, tmp_path):
    reference = train_losses(sample_shards, tmp_path / "tp2")
    sequence_parallel = "parallel.sequence_parallel=true"
    for name, extra in (("sp", [sequence_parallel]), ("sp_compiled", [sequence_parallel, "parallel.compile=true"])):
        logged = train_losses(sample_shards, tmp_path / name, *extra)
        assert [step for step, _, _ in logged] == [1, 2, 3], name
        for (step, loss, norm), (_, ref_loss, ref_norm) in zip(logged, reference):
            assert loss == pytest.approx(ref_loss, abs=1e-4) and norm == pytest.approx(ref_norm, abs=1e-4), (name, step)
