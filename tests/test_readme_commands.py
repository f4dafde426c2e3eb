"""The README's commands work as written, in order, on a fresh checkout (issue 13, part 1).

Every ```bash block of README.md is split into commands (backslash continuations joined,
comments dropped). The cheap ones run in order in a scratch directory that links the
repository's files, so the relative paths (runs/..., configs/..., data/...) resolve as in
a clone: preprocessing, training (with a few steps: `TRAIN_OVERRIDES` are appended, the
one liberty taken), checkpoint conversion, generation, plotting. Commands that need a GPU,
a cluster or ../shared (launchers with --gpus, SLURM, make, benchmarks) are listed as
skipped, never silently.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from distributed_helpers import REPO_ROOT, cpu_env

TRAIN_OVERRIDES = ["--set", "schedule.train_steps=4", "--set", "eval.iters=1", "--set", "checkpoint.interval=0"]
# Not cheap or not self-contained: GPU / cluster / ../shared data / the optional SmolLM2 file,
# benchmarks, and Equal-Info compression with a paper-size M1 (minutes of CPU per MB).
SKIP_WORDS = ("make ", "slurm", "hostfile", "--gpus", "benchmarks/", "pip install", "launchers/", "sbatch",
              "../shared", "GGUF", "gist", "configs/m1.yaml", "_corpus.py", "runs/m1", "runs/m2", "runs/eq",
              "m2_equal_info")  # the gist and Equal-Info pipelines: test_readme_gist.py, test_readme_equal_info.py
LINKED = ("data", "configs", "ds_configs", "tools", "megacompress", "examples", "launchers", ".venv")


def readme_commands(text: str) -> list[str]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line.split("  #")[0].strip())
    return commands


def runnable(command: str) -> bool:
    return command.startswith((".venv/bin/", "OMP_NUM_THREADS=")) and not any(w in command for w in SKIP_WORDS)


def test_readme_has_commands():
    commands = readme_commands((REPO_ROOT / "README.md").read_text())
    assert sum(map(runnable, commands)) >= 5, commands


@pytest.mark.distributed
@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path):
    for name in LINKED:
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    ran, skipped = [], []
    for command in readme_commands((REPO_ROOT / "README.md").read_text()):
        if not runnable(command):
            skipped.append(command)
            continue
        argv = shlex.split(command)
        env = cpu_env()
        while "=" in argv[0] and not argv[0].startswith((".", "/")):
            key, value = argv.pop(0).split("=", 1)
            env[key] = value
        if "megacompress.train" in argv:
            argv += TRAIN_OVERRIDES
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"README command failed: {command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        ran.append(command)
    print(f"ran {len(ran)} README commands; skipped {len(skipped)}: {skipped}")
    assert len(ran) >= 5
