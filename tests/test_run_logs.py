"""Runs you can read: what the trainer prints and keeps in the run directory (issue 13, parts 8-10)."""

import json
import subprocess
import sys

import pytest
from distributed_helpers import REPO_ROOT, cpu_env

from megacompress.training.trainer import LogWindow

TINY = ["model.vocab_size=259", "model.max_seq_len=32", "model.hidden_size=32", "model.num_heads=2",
        "model.num_layers=2", "model.ffn_hidden_size=64", "tokenizer.kind=bytes", "eval.iters=1",
        "schedule.train_steps=4", "schedule.warmup_steps=1", "schedule.global_batch_size=2",
        "schedule.micro_batch_size=2", "logging.log_interval=2", "eval.interval=2", "parallel.zero_stage=0",
        "logging.tensorboard=true"]


def train(shards, run_dir, *extra):
    overrides = TINY + [f"data.data_path=[{shards['train']}]", f"eval.data_path=[{shards['valid']}]",
                        f"logging.run_dir={run_dir}"]
    proc = subprocess.run([sys.executable, "-m", "megacompress.train", *[f"--set={o}" for o in overrides], *extra],
                          env=cpu_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.distributed
def test_stop_resume_and_what_the_run_directory_keeps(sample_shards, tmp_path):
    first = train(sample_shards, tmp_path, "--stop-at-step", "2")
    assert f"checkpoint saved at step 2 ({tmp_path}/checkpoints/global_step2); rerun the same command to resume" \
        in first
    assert "validation loss" in first  # evaluation results reach the console, not only metrics.jsonl
    second = train(sample_shards, tmp_path)
    assert "resumed from" in second and "validation loss" in second
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("time" in line for line in lines)
    events = [line for line in lines if line["split"] == "event"]
    assert events == [{"split": "event", "event": "resume", "step": 2, "checkpoint": str(tmp_path / "checkpoints" /
                                                                                          "global_step2"),
                       "time": events[0]["time"]}]
    train_lines = [line for line in lines if line["split"] == "train"]
    assert [line["step"] for line in train_lines] == [2, 4]
    assert all(line["log_interval_steps"] == 2 for line in train_lines)
    assert (tmp_path / "config.yaml").read_text().count("train_steps: 4") == 1
    log = (tmp_path / "train.log").read_text()
    assert "megacompress training" in log and "step 4/4" in log and "checkpoint saved at step 2" in log
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    out = tmp_path / "plot.png"
    subprocess.run([sys.executable, "tools/plot_run.py", str(tmp_path), "--out", str(out)], check=True,
                   cwd=REPO_ROOT, env=cpu_env(), capture_output=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_log_window_loss_is_the_token_weighted_mean_of_its_steps():
    window = LogWindow()
    for loss, labelled in ((2.0, 10), (4.0, 30)):
        window.add({"loss": loss, "labelled_tokens": labelled, "global_batch_size": 2}, 16)
    line = window.flush({"loss": 4.0, "step": 2}, flops_per_token=1.0, peak=None, world=1)
    assert line["loss"] == pytest.approx(3.5) and line["step_loss"] == 4.0 and line["log_interval_steps"] == 2
    assert line["tokens_per_s"] > 0 and window.steps == 0
