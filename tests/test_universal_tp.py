"""Universal checkpoints across a tensor-parallel change (ZeRO-1/2, torchrun, gloo, CPU).

Every checkpoint records DeepSpeed's ``universal_checkpoint_info`` (row-parallel, vocabulary
and replicated parameters, from the parameters' TP attributes), so ``to-universal`` joins
each parameter's TP shards along the right dimension and strips the vocabulary padding.

The flow: 5-step runs at TP=1 (one process) and TP=2 (two processes), checkpointing at step
3, for a vocabulary padded differently at TP 1 and 2 (259: 384 vs 512 rows, ZeRO-2) and one
padded the same (500: 512 rows, ZeRO-1); each step-3 checkpoint converted to a universal one
and continued at the other TP size must give the uninterrupted losses of steps 4-5 (TP=1
and TP=2 agree within float rounding). A universal checkpoint without the info is refused
at a TP change.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from distributed_helpers import REPO_ROOT, cpu_env, run_checked, run_torchrun
from test_training_distributed import assert_close, common, load
from torch import nn

from megacompress.atomic import write_text_atomic
from megacompress.models.config import ModelConfig
from megacompress.models.registry import build_model
from megacompress.parallel import state
from megacompress.parallel.layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from megacompress.training.checkpoint import (MANIFEST, CheckpointError, TrainState, universal_checkpoint_info,
                                              write_manifest)
from megacompress.training.convert import to_universal

WORKER = REPO_ROOT / "tests" / "workers" / "resume_runs.py"
VOCABS = {259: 2, 500: 1}  # vocabulary size -> ZeRO stage of its runs
ALLOW_TP = "checkpoint.allow_changes=[parallel.tensor_parallel_size]"


def job(name: str, out: Path, vocab: int, *extra: str) -> list[str]:
    spec = [f"model.vocab_size={vocab}", f"parallel.zero_stage={VOCABS[vocab]}", f"logging.run_dir={out}/{name}",
            *extra]
    return [f"{name}={';'.join(spec)}"]


def launch(out: Path, shards, tp: int, jobs: list[str]) -> None:
    args = [str(out), common(shards) + f";parallel.tensor_parallel_size={tp}", *jobs]
    if tp == 1:
        run_checked([sys.executable, str(WORKER), *args], env=cpu_env(), timeout=300)
    else:
        run_torchrun(WORKER, tp, args, timeout=300)


def resume_from(universal: Path) -> tuple[str, str, str]:
    return f"checkpoint.load_dir={universal}", "checkpoint.load_universal=true", ALLOW_TP


@pytest.fixture(scope="module")
def flow(sample_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("universal_tp")
    for tp in (1, 2):
        launch(out, sample_shards, tp,
               sum((job(f"tp{tp}_v{v}", out, v, "checkpoint.interval=3") for v in VOCABS), []))
        for vocab in VOCABS:
            to_universal(out / f"tp{tp}_v{vocab}" / "checkpoints", out / f"universal_tp{tp}_v{vocab}",
                         tag="global_step3")
    # As converted before checkpoints recorded the TP layout.
    old = out / "universal_old"
    shutil.copytree(out / "universal_tp1_v500", old)
    manifest = json.loads((old / "global_step3" / MANIFEST).read_text())
    manifest["universal_checkpoint_info"] = None
    write_text_atomic(old / "global_step3" / MANIFEST, json.dumps(manifest))
    launch(out, sample_shards, 2,
           sum((job(f"tp1to2_v{v}", out, v, *resume_from(out / f"universal_tp1_v{v}")) for v in VOCABS), [])
           + job("tp1to2_old", out, 500, *resume_from(old)))
    launch(out, sample_shards, 1,
           sum((job(f"tp2to1_v{v}", out, v, *resume_from(out / f"universal_tp2_v{v}")) for v in VOCABS), []))
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("vocab", sorted(VOCABS))
@pytest.mark.parametrize("source, target", [(1, 2), (2, 1)])
def test_universal_checkpoint_continues_at_other_tensor_parallel_size(flow, vocab, source, target):
    uninterrupted = {tp: load(flow, f"tp{tp}_v{vocab}")["losses"] for tp in (1, 2)}
    assert_close(uninterrupted[2], uninterrupted[1], f"vocab {vocab}: TP=2 vs TP=1")
    for rank in range(target):
        resumed = load(flow, f"tp{source}to{target}_v{vocab}", rank)
        assert resumed["steps"] == [4, 5], resumed.get("error")
        assert_close(resumed["losses"], uninterrupted[source][3:],
                     f"vocab {vocab}: TP {source} -> {target}, rank {rank}")


@pytest.mark.distributed
def test_universal_checkpoint_without_tp_layout_refuses_tp_change(flow):
    for rank in (0, 1):
        error = load(flow, "tp1to2_old", rank)["error"]
        assert "universal_old/global_step3 cannot be resharded (tensor_parallel_size 1 -> 2)" in error
        assert "resume it at tensor_parallel_size=1" in error


class Mixed(nn.Module):
    """Every kind of parameter, named unlike GPT's."""

    def __init__(self):
        super().__init__()
        if not state.is_initialized():
            state.initialize()  # a world of one
        self.table = VocabParallelEmbedding(300, 8)
        self.proj_in = ColumnParallelLinear(8, 16)
        self.proj_out = RowParallelLinear(16, 8, bias=True)
        self.scale = nn.Parameter(torch.ones(8))


def test_info_is_derived_from_parameter_attributes():
    info = universal_checkpoint_info(Mixed())
    assert info["parameter_with_row_parallelism_patterns"] == [r"proj_out\.weight$"]
    assert info["vocabulary_parameter_patterns"] == [r"table\.weight$"]
    assert sorted(info["tp_replicated_parameter_patterns"]) == [r"proj_out\.bias$", r"scale$"]
    assert info["original_vocab_size"] == 300
    assert "autotp_unsupported_parameter_patterns" not in info

    gpt = universal_checkpoint_info(build_model(ModelConfig.from_preset("tiny", num_layers=2, tie_embeddings=False)))
    assert gpt["parameter_with_row_parallelism_patterns"] == [
        rf"stack\.layers\.{i}\.{name}\.weight$" for i in (0, 1) for name in (r"attn\.out", r"mlp\.down")]
    assert gpt["vocabulary_parameter_patterns"] == [r"embed\.weight$", r"lm_head\.weight$"]


def test_parameters_that_cannot_be_resharded_are_listed():
    model = Mixed()
    model.scale.requires_grad_(False)
    model.proj_in.weight.partition_stride = 2
    unsupported = universal_checkpoint_info(model)["autotp_unsupported_parameter_patterns"]
    assert unsupported[r"scale$"].startswith("scale: frozen")
    assert unsupported[r"proj_in\.weight$"].startswith("proj_in.weight: tensor-parallel with partition_dim=0, "
                                                        "partition_stride=2")


def fake_checkpoint(root: Path, info: dict, *, zero_stage: int = 2, tp: int = 1) -> Path:
    """A committed checkpoint whose only DeepSpeed file holds ``info`` (enough for the checks
    `to_universal` makes before running ``ds_to_universal``)."""
    tag_dir = root / "global_step3"
    tag_dir.mkdir(parents=True)
    torch.save({"universal_checkpoint_info": info}, tag_dir / "mp_rank_00_model_states.pt")
    parallel = {"tensor_parallel_size": tp, "zero_stage": zero_stage}
    write_manifest(tag_dir, state=TrainState(3, 12, 0), model_config={}, train_config={"parallel": parallel})
    write_text_atomic(root / "latest", "global_step3")
    return root


def test_to_universal_refuses_what_cannot_be_restored(tmp_path):
    model = Mixed()
    model.scale.requires_grad_(False)
    ckpt = fake_checkpoint(tmp_path / "frozen", universal_checkpoint_info(model))
    with pytest.raises(CheckpointError, match=r"global_step3 cannot be made universal, these parameters cannot be "
                                              r"restored from it: scale: frozen"):
        to_universal(ckpt, tmp_path / "out")

    ckpt = fake_checkpoint(tmp_path / "zero3", universal_checkpoint_info(Mixed()), zero_stage=3, tp=2)
    with pytest.raises(CheckpointError, match="a ZeRO-3 checkpoint with tensor_parallel_size=2 cannot be made "
                                              "universal"):
        to_universal(ckpt, tmp_path / "out")
