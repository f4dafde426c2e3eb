"""Consistent CLIs (issue 13, part 12): every entry point's --help shows the name it was run by,
plain text (no reStructuredText markup) and help for every flag; a user error is one line."""

import re
import subprocess
import sys

import pytest
from distributed_helpers import REPO_ROOT, cpu_env

CLIS = [
    (["-m", "megacompress.train"], "python -m megacompress.train"),
    (["-m", "megacompress.generate"], "python -m megacompress.generate"),
    (["-m", "megacompress.gist"], "python -m megacompress.gist"),
    (["-m", "megacompress.data.preprocess"], "python -m megacompress.data.preprocess"),
    (["tools/preprocess_data.py"], "python tools/preprocess_data.py"),
    (["tools/convert_checkpoint.py"], "python tools/convert_checkpoint.py"),
    (["tools/plot_run.py"], "python tools/plot_run.py"),
    (["tools/plan_job.py"], "python tools/plan_job.py"),
    (["tools/compress_corpus.py"], "python tools/compress_corpus.py"),
    (["tools/decompress_corpus.py"], "python tools/decompress_corpus.py"),
    (["-m", "megacompress.methods.equal_info.evaluate"], "python -m megacompress.methods.equal_info.evaluate"),
    (["launchers/torchrun.py"], "python launchers/torchrun.py"),
    (["launchers/slurm.py"], "python launchers/slurm.py"),
    (["launchers/slurm_job.py"], "python launchers/slurm_job.py"),
    (["launchers/deepspeed_launch.py"], "python launchers/deepspeed_launch.py"),
]


def flags_without_help(text: str) -> list[str]:
    """Option lines of argparse's help with nothing after the flag and no indented line below."""
    lines = text.splitlines()
    bare = []
    for i, line in enumerate(lines):
        match = re.match(r"^  (-[-\w]+(?:[ ,][^ ]+)*)$", line)
        if match and not (i + 1 < len(lines) and lines[i + 1].startswith(" " * 8)):
            bare.append(match.group(1))
    return bare


@pytest.mark.parametrize("argv, prog", CLIS, ids=[c[1] for c in CLIS])
def test_help_is_plain_and_complete(argv, prog):
    proc = subprocess.run([sys.executable, *argv, "--help"], cwd=REPO_ROOT, env=cpu_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: {prog} "), proc.stdout[:200]
    assert "``" not in proc.stdout and ":class:" not in proc.stdout and ":func:" not in proc.stdout
    assert flags_without_help(proc.stdout) == [], proc.stdout
    assert proc.stderr.strip() == "", proc.stderr  # no import-time notices


def test_user_errors_are_one_line_with_exit_2(tmp_path):
    cases = [
        (["-m", "megacompress.train", "--set", "schedule.train_stepz=3"], "unknown config key 'schedule.train_stepz'"),
        (["-m", "megacompress.train", "--set", f"data.data_path=[{tmp_path}/none_text_document]",
          "--set", f"logging.run_dir={tmp_path}/run"], "shard not found"),
        (["tools/convert_checkpoint.py", "export", str(tmp_path / "nope"), str(tmp_path / "out")],
         "checkpoint directory"),
        (["tools/preprocess_data.py", "--input", str(tmp_path), "--output-prefix", str(tmp_path / "o")],
         "is a directory"),
        (["-m", "megacompress.generate", "--model", str(tmp_path / "nope"), "--prompt", "x"], "not found"),
        (["-m", "megacompress.generate", "--model", str(tmp_path), "--prompt", "x", "--device", "cuda"],
         "no CUDA device"),
        (["-m", "megacompress.gist", "compress", "--model", str(tmp_path), "--instructions", "x.jsonl",
          "--out", str(tmp_path / "c"), "--device", "gpu"], "is not a device"),
    ]
    for argv, message in cases:
        proc = subprocess.run([sys.executable, *argv], cwd=REPO_ROOT, env=cpu_env(), capture_output=True, text=True,
                              timeout=120)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], (argv, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_device_flag(monkeypatch):
    import torch

    from megacompress import cli

    assert cli.resolve_device("cpu") == torch.device("cpu")
    assert cli.resolve_device("auto") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    for bad, message in (("meta", "only cpu and cuda"), ("banana", "is not a device")):
        with pytest.raises(cli.DeviceError, match=message):
            cli.resolve_device(bad)
    # With GPUs, a bare `cuda` (like `auto`) is this rank's own GPU, not every rank's GPU 0.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert cli.resolve_device("cuda") == cli.resolve_device("auto") == torch.device("cuda:1")
    assert cli.resolve_device("cuda:0") == torch.device("cuda:0")
