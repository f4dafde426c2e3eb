"""Per-token loss over the global batch: gradients do not depend on micro batch or DP size.

Right-padded documents of very different lengths (document dataset: one document per
sample) carry different numbers of labels per sample, so a per-micro-batch mean would
weight tokens differently for each way of cutting the global batch of 4 (the old rule:
gradients differed by ~100% between micro 4 and micro 1). Megatron's rule (sum of token
losses / labelled tokens of the global batch) gives the same gradients for micro 1/2/4
at DP 1 and micro 1/2 at DP 2, and they equal a plain PyTorch reference.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from distributed_helpers import REPO_ROOT, cpu_env, run_checked, run_torchrun

from megacompress.models.config import ModelConfig
from megacompress.models.gpt import GPT

WORKER = REPO_ROOT / "tests" / "workers" / "train_runs.py"
REL_TOL = 1e-6
MODEL = dict(vocab_size=259, max_seq_len=32, hidden_size=32, num_heads=2, num_layers=2, ffn_hidden_size=64)


@pytest.fixture(scope="module")
def padded_shard(tmp_path_factory):
    """16 byte-level documents of 2..31 bytes: every sample is right-padded to 32."""
    out = tmp_path_factory.mktemp("padded")
    lengths = [2, 31, 5, 17, 29, 3, 11, 24, 8, 30, 4, 19, 26, 6, 13, 21]
    src = out / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": ("abcdefghij klmnop " * 2)[:n]}) + "\n" for n in lengths))
    subprocess.run([sys.executable, "-m", "megacompress.data.preprocess", "--input", str(src), "--output-prefix",
                    str(out / "docs"), "--tokenizer", "bytes"], check=True, env=cpu_env(), capture_output=True)
    return str(out / "docs_text_document")


def spec(shard: str, run_dir, micro: int) -> str:
    model = ";".join(f"model.{k}={v}" for k, v in MODEL.items())
    return ";".join([model, "tokenizer.kind=bytes", f"data.data_path=[{shard}]", "data.kind=document",
                     "data.split=1,0,0", f"eval.data_path=[{shard}]", "eval.iters=1", "schedule.train_steps=2", "schedule.warmup_steps=1",
                     "schedule.global_batch_size=4", f"schedule.micro_batch_size={micro}",
                     "parallel.zero_stage=0", "logging.progress_bar=false", f"logging.run_dir={run_dir}"])


def relative_difference(a: dict, b: dict) -> float:
    num = sum(float((a[n] - b[n]).pow(2).sum()) for n in a)
    den = sum(float(b[n].pow(2).sum()) for n in b)
    return (num / den) ** 0.5


@pytest.fixture(scope="module")
def grads(padded_shard, tmp_path_factory):
    out = tmp_path_factory.mktemp("grads")
    jobs = lambda micros: [a for m in micros for a in ("--job", f"m{m}={spec(padded_shard, out / f'run{m}', m)}")]
    run_checked([sys.executable, str(WORKER), "--out", str(out / "dp1"), "--first-step-grads", *jobs((1, 2, 4))],
                env=cpu_env(), timeout=240)
    run_torchrun(WORKER, 2, ["--out", str(out / "dp2"), "--first-step-grads", *jobs((1, 2))], timeout=240)
    return {f"dp{dp}_m{m}": torch.load(out / f"dp{dp}" / f"m{m}.rank0.pt")
            for dp, micros in ((1, (1, 2, 4)), (2, (1, 2))) for m in micros}


@pytest.mark.distributed
def test_gradients_independent_of_micro_batch_and_dp(grads):
    reference = grads["dp1_m4"]
    assert reference["labelled"] > 0
    for name, run in grads.items():
        assert run["labelled"] == reference["labelled"], name
        diff = relative_difference(run["grads"], reference["grads"])
        assert diff <= REL_TOL, f"{name}: gradients differ from DP 1 micro 4 by {diff:.2e} relative"
        assert abs(run["loss"] - reference["loss"]) <= REL_TOL * reference["loss"], name


@pytest.mark.distributed
def test_gradients_equal_plain_pytorch_per_token_mean(grads, padded_shard, tmp_path):
    """The engine's gradient is d(sum of token losses / labelled tokens) of the same 4 samples."""
    from megacompress.data.builder import DataConfig, build_datasets
    from megacompress.data.collate import collate
    from megacompress.data.sampler import DataParallelSampler
    from megacompress.data.tokenizers import build_tokenizer

    data = DataConfig(data_path=[padded_shard], kind="document", split="1,0,0", cache_dir=str(tmp_path))
    train, _, _ = build_datasets(data, build_tokenizer("bytes"), MODEL["max_seq_len"], [8, 0, 0])
    indices = next(iter(DataParallelSampler(8, 0, 4, 4, 0, 1)))
    batch = collate([train[i] for i in indices])
    model = GPT(ModelConfig(**MODEL), seed=1234)
    out = model(batch["input_ids"], batch["position_ids"], batch["document_ids"], batch["labels"])
    out.loss.backward()
    expected = {n: p.grad for n, p in model.named_parameters()}
    diff = relative_difference(grads["dp1_m1"]["grads"], expected)
    assert diff <= REL_TOL, f"engine gradients differ from the per-token reference by {diff:.2e}"
