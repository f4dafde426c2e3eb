"""TP=2 and TP=2 x DP=2 (real gloo processes) against the single-process TP=1 model."""

from __future__ import annotations

import pytest
import torch

from distributed_helpers import REPO_ROOT, run_torchrun
from megacompress.parallel import grads, state
from megacompress.parallel.layers import padded_vocab_size
from workers.parallel_tp_dp import VOCAB, ToyModel, global_batch

WORKER = REPO_ROOT / "tests" / "workers" / "parallel_tp_dp.py"
RTOL = 1e-5


@pytest.fixture(scope="module")
def reference():
    """The TP=1 model on the whole global batch, in this process (no torch.distributed)."""
    state.destroy()
    state.initialize(1)
    try:
        model = ToyModel()
        ids, labels = global_batch()
        logits, loss_tok = model(ids, labels)
        (loss_tok.sum() / loss_tok.numel()).backward()
        return {
            "logits": logits.detach(),
            "loss_tok": loss_tok.detach(),
            "params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
            "grad_norm": grads.grad_norm(model.parameters()),
            "grad_norm_inf": grads.grad_norm(model.parameters(), float("inf")),
        }
    finally:
        state.destroy()


def assert_close(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL * expected.abs().max().item(), msg=what)


@pytest.mark.distributed
@pytest.mark.parametrize("nproc,tp,preinit", [(2, 2, False), (4, 2, True)], ids=["tp2", "tp2xdp2-preinit"])
def test_tensor_and_data_parallel_match_single_process(reference, tmp_path, nproc, tp, preinit):
    run_torchrun(WORKER, nproc, ["--tp", str(tp), "--out", str(tmp_path)] + (["--preinit"] if preinit else []),
                 timeout=120)
    layout = state.compute_layout(nproc, tp)
    for rank in range(nproc):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        tp_rank, dp_rank = layout.tensor_parallel_rank(rank), layout.data_parallel_rank(rank)
        assert (got["tp_rank"], got["dp_rank"]) == (tp_rank, dp_rank)
        assert tuple(got["tp_group"]) == layout.tensor_parallel_group_of(rank)
        assert tuple(got["dp_group"]) == layout.data_parallel_group_of(rank)
        assert got["mpu"] == (tp_rank, tp, dp_rank, nproc // tp, layout.tensor_parallel_group_of(rank)[0],
                              list(layout.data_parallel_group_of(rank)))

        rows = slice(*got["rows"])
        assert_close(got["logits"], reference["logits"][rows], f"rank {rank} logits")
        assert_close(got["loss_tok"], reference["loss_tok"][rows], f"rank {rank} per-token loss")
        assert (got["loss_tok"][global_batch()[1][rows] == -100] == 0).all()
        for name, expected in reference["grads"].items():
            param, grad = got["params"][name], got["grads"][name]
            if name == "emb.weight":  # padded rows: zero weight, zero gradient
                assert param.shape[0] == padded_vocab_size(VOCAB, tp)
                assert (param[VOCAB:] == 0).all() and (grad[VOCAB:] == 0).all()
                param, grad = param[:VOCAB], grad[:VOCAB]
            torch.testing.assert_close(param, reference["params"][name], rtol=0, atol=0,
                                       msg=f"rank {rank} {name}: TP init differs from TP=1")
            assert_close(grad, expected, f"rank {rank} grad of {name} (DP-averaged)")
        assert_close(got["grad_norm"], reference["grad_norm"], f"rank {rank} TP-aware grad norm")
        assert_close(got["grad_norm_inf"], reference["grad_norm_inf"], f"rank {rank} TP-aware inf norm")
        assert_close(got["clipped_norm_before"], reference["grad_norm"], f"rank {rank} clip_grad_norm_ return")
        assert_close(got["norm_after_clip"], torch.tensor(0.1), f"rank {rank} norm after clipping to 0.1")


@pytest.mark.distributed
@pytest.mark.slow
def test_deepspeed_zero1_with_mpu_matches_single_process(tmp_path):
    """DeepSpeed takes state.mpu at TP=2: same losses and grad norms as plain TP=1 AdamW."""
    steps, lr = 3, 1e-2
    state.destroy()
    state.initialize(1)
    try:
        model = ToyModel()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        ids, labels = global_batch()
        losses, norms = [], []
        for _ in range(steps):
            optimizer.zero_grad()
            _, loss_tok = model(ids, labels)
            loss = loss_tok.sum() / loss_tok.numel()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            norms.append(grads.grad_norm(model.parameters()).item())
    finally:
        state.destroy()

    run_torchrun(REPO_ROOT / "tests" / "workers" / "parallel_deepspeed_mpu.py", 2,
                 ["--tp", "2", "--steps", str(steps), "--lr", str(lr), "--out", str(tmp_path)], timeout=240)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["losses"] == pytest.approx(losses, rel=1e-5), f"rank {rank} losses"
        assert got["norms"] == pytest.approx(norms, rel=1e-5), f"rank {rank} DeepSpeed grad norms"
