"""GPTHF end to end: `python -m megacompress.train` (2 gloo processes, TP=2, DeepSpeed ZeRO-1) on
sentence shards, `tools/convert_checkpoint.py export`, then `python -m megacompress.generate`
fast and slow print the same greedy text. A GPTHF on shards without sentence ends is refused."""

import json
import sys

import pytest
from distributed_helpers import cpu_env, free_port, run_checked

from megacompress.data.builder import DataConfig, build_datasets
from megacompress.data.registry import dataset_batch_keys
from megacompress.data.tokenizers import build_tokenizer
from megacompress.models import load_pretrained
from megacompress.models.config import ConfigError
from megacompress.models.registry import select_inputs

MODEL = ["model.preset=tiny-gpthf", "model.vocab_size=259", "model.hidden_size=32", "model.num_heads=2",
         "model.ffn_hidden_size=64", "model.max_seq_len=64"]


def settings(shards, run_dir):
    return MODEL + ["tokenizer.kind=bytes", f"data.data_path=[{shards['train']}]", "data.kind=document",
                    "data.use_sentences=true", f"eval.data_path=[{shards['valid']}]", "eval.iters=1",
                    "schedule.train_steps=3", "schedule.warmup_steps=1", "schedule.global_batch_size=4",
                    "schedule.micro_batch_size=2", "parallel.zero_stage=1", "parallel.tensor_parallel_size=2",
                    "logging.progress_bar=false", f"logging.run_dir={run_dir}"]


def train_losses(shards, run_dir, *extra):
    """Train with `settings` + ``extra`` (``KEY=VALUE``) on 2 processes, logging every step;
    returns the train records' (step, loss, grad_norm)."""
    overrides = [arg for s in [*settings(shards, run_dir), *extra, "logging.log_interval=1"] for arg in ("--set", s)]
    run_checked([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
                 f"--master-port={free_port()}", "-m", "megacompress.train", *overrides], timeout=400)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in records if r["split"] == "train"]


@pytest.mark.distributed
def test_train_export_generate_fast_equals_slow(sample_shards, tmp_path):
    run = tmp_path / "run"
    overrides = [arg for s in settings(sample_shards, run) for arg in ("--set", s)]
    run_checked([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
                 f"--master-port={free_port()}", "-m", "megacompress.train", *overrides], timeout=300)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]
    assert all(r["loss"] < 6.0 for r in records)  # ln(259) = 5.56 at random init

    export = tmp_path / "export"
    run_checked([sys.executable, "tools/convert_checkpoint.py", "export", str(run / "checkpoints"), str(export)])
    assert load_pretrained(export).config.architecture == "gpthf"
    texts = {}
    for mode in ("fast", "slow"):
        proc = run_checked([sys.executable, "-m", "megacompress.generate", "--model", str(export), "--tokenizer",
                            "bytes", "--prompt", "First Citizen: Hear me. We are", "--max-new-tokens", "24",
                            "--mode", mode], env=cpu_env())
        texts[mode] = proc.stdout
    assert texts["fast"] == texts["slow"] and "First Citizen: Hear me. We are" in texts["fast"]


def test_shards_without_sentence_ends_are_refused(sample_shards, tmp_path):
    """What the trainer checks before the first step: the dataset's keys against the model's inputs."""
    tokenizer = build_tokenizer("bytes")
    for use_sentences in (True, False):
        config = DataConfig(data_path=[sample_shards["train"]], kind="document", split="1,0,0",
                            use_sentences=use_sentences, cache_dir=str(tmp_path))
        train, _, _ = build_datasets(config, tokenizer, seq_length=64, num_samples=[4, 0, 0])
        keys = dict.fromkeys(dataset_batch_keys(train))
        if use_sentences:
            assert "eos_mask" in select_inputs("gpthf", keys)
        else:
            with pytest.raises(ConfigError, match=r"lacks required key\(s\) \['eos_mask'\]"):
                select_inputs("gpthf", keys)
