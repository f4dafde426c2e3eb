"""Logs a person can read: without a terminal, progress is plain lines, never carriage returns."""

import io
import re
import subprocess
import sys

from distributed_helpers import REPO_ROOT, cpu_env

from megacompress.progress import LineProgress, progress


def test_line_progress_prints_plain_lines():
    out = io.StringIO()
    with LineProgress(total=2_000_000, desc="preprocess", unit="B", unit_scale=True, interval_s=0, file=out) as bar:
        for _ in range(4):
            bar.update(500_000)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 5  # one per update (interval 0) and one at close
    assert lines[-1].startswith("preprocess: 2.0M/2.0M B (100%), ")


def test_progress_is_silent_when_disabled_and_plain_off_a_terminal(capsys):
    assert list(progress(range(3), enabled=False)) == [0, 1, 2]
    assert list(progress(range(3), desc="gen", interval_s=0)) == [0, 1, 2]  # pytest's stderr is no tty
    err = capsys.readouterr().err
    assert "\r" not in err and err.splitlines()[-1].startswith("gen: 3/3 it (100%)")


def test_training_log_under_a_pipe_has_one_line_per_interval(sample_shards, tmp_path):
    overrides = ["model.vocab_size=259", "model.max_seq_len=32", "model.hidden_size=32", "model.num_heads=2",
                 "model.num_layers=2", "model.ffn_hidden_size=64", "tokenizer.kind=bytes",
                 f"data.data_path=[{sample_shards['train']}]", f"eval.data_path=[{sample_shards['valid']}]",
                 "eval.iters=1", "schedule.train_steps=4", "schedule.warmup_steps=1", "schedule.global_batch_size=2",
                 "schedule.micro_batch_size=2", "logging.log_interval=2", "parallel.zero_stage=0",
                 f"logging.run_dir={tmp_path}"]
    # bytes: text=True would read with universal newlines, which turn "\r" into "\n"
    proc = subprocess.run([sys.executable, "-m", "megacompress.train", *[f"--set={o}" for o in overrides]],
                          env=cpu_env(), cwd=REPO_ROOT, capture_output=True, timeout=120)
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, stderr[-3000:]
    assert "\r" not in stdout + stderr
    steps = re.findall(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (step .*)$", stdout, re.M)  # after the time
    assert [line.split(" |")[0] for line in steps] == ["step 2/4", "step 4/4"]
    assert "tokens/s" in steps[0] and "loss" in steps[0]


def test_library_bars_are_off_without_a_terminal():
    """Bars of other libraries (DeepSpeed's zero_to_fp32) pass no ``disable``: off a terminal, nothing."""
    from tqdm import tqdm

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    log, terminal = io.StringIO(), Terminal()
    assert list(tqdm(range(3), desc="Loading checkpoint shards", file=log)) == [0, 1, 2]
    assert log.getvalue() == ""
    list(tqdm(range(3), desc="Loading checkpoint shards", file=terminal))
    assert "\r" in terminal.getvalue() and "3/3" in terminal.getvalue()  # a terminal still gets the bar
    explicit = io.StringIO()
    list(tqdm(range(3), file=explicit, disable=False))  # a caller's own choice stands
    assert "3/3" in explicit.getvalue()
