"""Single-process checks of megacompress.parallel: rank layout, world-1 state, mpu surface,
cross-entropy against torch, initialisation invariance, grad norm and clipping."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from megacompress.parallel import grads, mappings, random, sharding, state
from megacompress.parallel.cross_entropy import vocab_parallel_cross_entropy
from megacompress.parallel.layers import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                                          linear, padded_vocab_size)

# Every mpu method DeepSpeed 0.19.8 calls unconditionally (grep `mpu.get_` in the installed package);
# the sequence/slice/pipe spellings are only called behind hasattr() checks.
DEEPSPEED_MPU_METHODS = [
    "get_model_parallel_group", "get_model_parallel_rank", "get_model_parallel_world_size",
    "get_tensor_model_parallel_group", "get_tensor_model_parallel_rank",
    "get_tensor_model_parallel_world_size", "get_tensor_model_parallel_src_rank",
    "get_data_parallel_group", "get_data_parallel_rank", "get_data_parallel_world_size",
    "get_data_parallel_group_ranks", "get_pipeline_model_parallel_world_size",
]


@pytest.fixture
def world1(monkeypatch):
    """state initialised as a plain single process (no launcher environment)."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    state.destroy()
    state.initialize(1)
    yield
    state.destroy()


def test_layout_world4_tp2():
    layout = state.compute_layout(4, 2)
    assert layout.tensor_parallel_groups == ((0, 1), (2, 3))
    assert layout.data_parallel_groups == ((0, 2), (1, 3))
    assert [layout.tensor_parallel_rank(r) for r in range(4)] == [0, 1, 0, 1]
    assert [layout.data_parallel_rank(r) for r in range(4)] == [0, 0, 1, 1]
    assert layout.data_parallel_size == 2


def test_layout_other_shapes_and_errors():
    assert state.compute_layout(8, 4).data_parallel_groups == ((0, 4), (1, 5), (2, 6), (3, 7))
    assert state.compute_layout(3, 1).tensor_parallel_groups == ((0,), (1,), (2,))
    with pytest.raises(ValueError, match="not divisible"):
        state.compute_layout(6, 4)


def test_world1_without_distributed(world1):
    assert not torch.distributed.is_initialized()
    assert (state.get_rank(), state.get_world_size()) == (0, 1)
    assert state.get_tensor_parallel_group() is None and state.get_data_parallel_group() is None
    for name in DEEPSPEED_MPU_METHODS:
        getattr(state.mpu, name)()  # every method DeepSpeed may call answers
    assert state.mpu.get_data_parallel_group_ranks() == [0]
    with pytest.raises(RuntimeError, match="tensor_parallel_size"):
        state.initialize(2)


def test_uninitialised_state_raises():
    state.destroy()
    with pytest.raises(RuntimeError, match="initialize"):
        state.get_tensor_parallel_rank()


def test_mappings_are_identity_at_tp1(world1):
    x = torch.randn(3, 4, requires_grad=True)
    for fn in (mappings.copy_to_tp_region, mappings.reduce_from_tp_region,
               mappings.gather_from_tp_region, mappings.scatter_to_tp_region):
        y = fn(x)
        torch.testing.assert_close(y, x)
        (g,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(g, torch.ones_like(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_matches_torch(world1, dtype):
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(2, 5, 11, generator=gen)).to(dtype).requires_grad_()
    labels = torch.randint(0, 11, (2, 5), generator=gen)
    labels[0, 1] = labels[1, 4] = -100
    loss = vocab_parallel_cross_entropy(logits, labels)
    assert loss.dtype == torch.float32 and loss.shape == labels.shape
    ref_logits = logits.detach().float().requires_grad_()
    ref = F.cross_entropy(ref_logits.view(-1, 11), labels.view(-1), reduction="none").view(2, 5)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    weights = torch.rand(2, 5, generator=gen)  # a non-uniform upstream gradient
    (grad,) = torch.autograd.grad((loss * weights).sum(), logits)
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), ref_logits)
    assert grad.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(grad.float(), ref_grad, rtol=tol, atol=tol)


def test_cross_entropy_excludes_vocab_padding(world1):
    logits = torch.randn(4, 8, requires_grad=True)  # 6 real ids + 2 padding columns
    labels = torch.tensor([0, 5, -100, 3])
    loss = vocab_parallel_cross_entropy(logits, labels, vocab_size=6)
    ref = F.cross_entropy(logits[:, :6], labels, reduction="none")
    torch.testing.assert_close(loss, ref)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert (grad[:, 6:] == 0).all() and (grad[2] == 0).all()
    with pytest.raises(ValueError, match="labels must lie in"):
        vocab_parallel_cross_entropy(logits, torch.tensor([0, 6, 1, 1]), vocab_size=6)


def test_initialisation_is_a_slice_of_the_full_weight():
    full = random.normal_full((6, 4), 0.02, seed=3, key="fc1")
    torch.testing.assert_close(full, random.normal_full((6, 4), 0.02, seed=3, key="fc1"), rtol=0, atol=0)
    assert not torch.equal(full, random.normal_full((6, 4), 0.02, seed=3, key="fc2"))
    assert not torch.equal(full, random.normal_full((6, 4), 0.02, seed=4, key="fc1"))
    parts = [sharding.shard(full, 0, rank=r, world_size=3) for r in range(3)]
    torch.testing.assert_close(torch.cat(parts), full, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not divisible"):
        sharding.shard(full, 1, rank=0, world_size=3)


def test_layers_at_tp1_match_plain_torch(world1):
    col = ColumnParallelLinear(4, 6, bias=True, init_seed=1, seed_offset="a")
    row = RowParallelLinear(6, 4, init_seed=1, seed_offset="b")
    emb = VocabParallelEmbedding(10, 4, init_seed=1, seed_offset="c")
    torch.testing.assert_close(col.weight.data, random.normal_full((6, 4), 0.02, 1, "a"), rtol=0, atol=0)
    torch.testing.assert_close(row.weight.data, random.normal_full((4, 6), 0.02, 1, "b"), rtol=0, atol=0)
    for p, dim in ((col.weight, 0), (col.bias, 0), (row.weight, 1), (emb.weight, 0)):
        assert (p.tensor_model_parallel, p.partition_dim, p.partition_stride) == (True, dim, 1)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(row(col(x)), F.linear(F.linear(x, col.weight, col.bias), row.weight))
    ids = torch.tensor([[0, 9, 3]])
    torch.testing.assert_close(emb(ids), emb.weight[ids])
    assert padded_vocab_size(50259, 2) == 50260 and padded_vocab_size(50259, 2, vocab_multiple=64) == 50304


@pytest.mark.parametrize("shape", [(1, 1, 24), (2, 16, 24), (5, 40, 24)])  # few rows (CPU route), many rows
def test_linear_equals_f_linear(shape):
    w, b, x = torch.randn(32, 24), torch.randn(32), torch.randn(shape)
    with torch.no_grad():  # generation: where the CPU route applies
        y = linear(x, w, b)
    assert y.shape == (*shape[:-1], 32) and y.is_contiguous()
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-6, atol=1e-6)
    w.requires_grad_()
    assert linear(x, w, b).grad_fn is not None  # with autograd: F.linear (ZeRO-3 gathers through it)


def test_grad_norm_and_clip_at_tp1(world1):
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    params[0].grad = torch.tensor([3.0, 0.0, 0.0])
    params[1].grad = torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    assert math.isclose(grads.grad_norm(params).item(), 5.0, rel_tol=1e-6)
    assert math.isclose(grads.grad_norm(params, float("inf")).item(), 4.0)
    before = grads.clip_grad_norm_(params, max_norm=1.0)
    assert math.isclose(before.item(), 5.0, rel_tol=1e-6)
    assert math.isclose(grads.grad_norm(params).item(), 1.0, rel_tol=1e-5)


def test_bare_multitask_srun_is_refused(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    state.destroy()
    with pytest.raises(RuntimeError, match="SLURM task 1 of 2"):
        state.initialize(1)
    assert not state.is_initialized()


def test_submitit_slurm_environment_initialises_distributed():
    """Inside a (one-task) submitit job, RANK/MASTER_* come from submitit and gloo starts."""
    from distributed_helpers import cpu_env, run_checked

    env = {k: v for k, v in cpu_env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="12", SLURM_JOB_NODELIST="localhost", SLURM_NTASKS="1",
               SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0")
    code = ("import torch; from megacompress.parallel import state; state.initialize(1); "
            "print(torch.distributed.is_initialized(), torch.distributed.get_backend(), state.get_world_size()); "
            "state.destroy(); print(torch.distributed.is_initialized())")
    out = run_checked([sys.executable, "-c", code], env=env, timeout=60).stdout.split()
    assert out == ["True", "gloo", "1", "False"]


def test_embedding_rejects_out_of_range_ids(world1):
    from megacompress.parallel.layers import VocabParallelEmbedding

    emb = VocabParallelEmbedding(37, 8, vocab_multiple=4)  # padded to 40 rows
    with pytest.raises(ValueError, match=r"\[0, 37\)"):
        emb(torch.tensor([[1, 37]]))
    with pytest.raises(ValueError, match="mismatch"):
        emb(torch.tensor([-1]))
