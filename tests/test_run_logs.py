"""Runs you can read: what the trainer prints and keeps in the run directory (issue 13, parts 8-10)."""

import json
import re
import subprocess
import sys
import warnings

import pytest
from distributed_helpers import REPO_ROOT, cpu_env, torchrun_command

from megacompress.cli import quiet_library_warnings
from megacompress.training.trainer import LogWindow, log_line

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")  # what every train.log line starts with

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
    assert all(TIMESTAMP.match(line) for line in log.splitlines()), log  # banner lines included
    steps = [line for line in log.splitlines() if " step 4/4 | " in line]
    assert len(steps) == 1 and re.search(r" step 4/4 \| loss \d+\.\d{4} \(mean of 2 steps\) \| lr ", steps[0]), log
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
    assert line["tokens_per_s"] > 0 and window.steps == 0 and "mfu" not in line


def test_log_window_reports_per_device_throughput_and_mfu_against_a_given_peak():
    window = LogWindow()
    window.add({"loss": 1.0, "labelled_tokens": 8, "global_batch_size": 4}, 16)
    line = window.flush({"loss": 1.0, "step": 1}, flops_per_token=3e9, peak=100e12, world=4)
    assert line["tokens_per_s_per_device"] == pytest.approx(line["tokens_per_s"] / 4)
    assert line["model_tflops_per_device"] == pytest.approx(3e9 * line["tokens_per_s"] / 4 / 1e12)
    assert line["mfu"] == pytest.approx(line["model_tflops_per_device"] / 100)
    text = log_line({**line, "lr": 1e-3, "grad_norm": 1.0, "step_time_s": 0.1, "padding_fraction": 0.0}, 10)
    assert "tokens/s/device" in text and "TFLOP/s/device" in text and "MFU " in text


def test_log_line_says_the_loss_is_a_mean_over_the_interval():
    line = {"step": 40, "loss": 6.12344, "lr": 8.5e-4, "grad_norm": 0.5, "tokens_per_s": 1445.0, "step_time_s": 0.35,
            "padding_fraction": 0.0}
    assert log_line({**line, "log_interval_steps": 10}, 120).startswith(
        "step 40/120 | loss 6.1234 (mean of 10 steps) | lr 8.500e-04 | grad_norm 0.500 | 1,445 tokens/s")
    assert log_line({**line, "log_interval_steps": 1}, 120).startswith("step 40/120 | loss 6.1234 (1 step) | lr ")


def test_library_deprecation_warnings_are_filtered_exactly():
    """torch's deprecation notices about DeepSpeed's calls are gone; everything else still shows."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("once")  # megacompress.cli.quiet_warnings on rank 0
        quiet_library_warnings()
        warnings.warn("`torch.jit.script_method` is deprecated. Please switch to `torch.compile` or `torch.export`.",
                      DeprecationWarning)
        for name in ("all_gather_into_tensor", "reduce_scatter_tensor"):
            warnings.warn(f"`torch.distributed.{name}` is deprecated. Please use `torch.distributed.x` instead.",
                          FutureWarning)
        warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated.", UserWarning)  # other category
        warnings.warn("`torch.distributed.all_gather` is deprecated.", FutureWarning)  # other message
    assert [str(w.message) for w in caught] == ["`torch.distributed.all_gather_into_tensor` is deprecated.",
                                                "`torch.distributed.all_gather` is deprecated."]


@pytest.mark.distributed
def test_redirected_stderr_of_a_saved_and_resumed_run_is_clean(sample_shards, tmp_path):
    """Under SLURM stderr is a file: no carriage-return bars and no library deprecation notices, for two
    processes with ZeRO-2 (where DeepSpeed triggers torch's notices), a save, a resume and an export
    (DeepSpeed's zero_to_fp32 draws a tqdm bar)."""
    changed = ("parallel.zero_stage", "logging.tensorboard", "schedule.global_batch_size")
    overrides = [o for o in TINY if not o.startswith(changed)] + [
        "parallel.zero_stage=2", "schedule.global_batch_size=4", f"data.data_path=[{sample_shards['train']}]",
        f"eval.data_path=[{sample_shards['valid']}]", f"logging.run_dir={tmp_path / 'run'}"]
    command = torchrun_command(2, ["-m", "megacompress.train", *[f"--set={o}" for o in overrides]])
    err = tmp_path / "stderr.log"
    with open(err, "w") as stderr:
        for extra in (["--stop-at-step", "2"], []):  # save at step 2, then resume to step 4
            proc = subprocess.run(command + extra, env=cpu_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                  stderr=stderr, text=True, timeout=180)
            assert proc.returncode == 0, err.read_text()[-3000:]
        assert "resumed from" in proc.stdout
        export = [sys.executable, "-m", "megacompress.training.convert", "export",
                  str(tmp_path / "run" / "checkpoints"), str(tmp_path / "export")]
        proc = subprocess.run(export, env=cpu_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
                              timeout=120)
        assert proc.returncode == 0, err.read_text()[-3000:]
    text = err.read_bytes().decode()  # not read_text(): its universal newlines would turn "\r" into "\n"
    assert "\r" not in text, text[-3000:]
    # the cli prints a warning as "warning: MESSAGE", without its category: look for both
    for word in ("DeprecationWarning", "FutureWarning", "deprecated"):
        assert word not in text, text[-3000:]
