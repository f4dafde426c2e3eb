"""Stages as child processes, for the scripts that chain the project's commands (the quality
benchmarks and ``examples/demo.py``): each command runs from the repository root, is printed
first and timed, and a failure names the command (and its log) before it raises."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def header(title: str) -> None:
    print(f"\n{'=' * 78}\n== {title}\n{'=' * 78}", flush=True)


def child_env() -> dict:
    """The children share the cores, so one thread each unless the caller set OMP_NUM_THREADS."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONWARNINGS": "ignore"}
    import torch

    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    return env


def run(cmd: list, log: Path | None = None, env: dict | None = None) -> float:
    """Run ``cmd`` (output streamed, or appended to ``log``) in `child_env` updated by ``env``;
    its wall seconds.

    Raises ``subprocess.CalledProcessError`` on a non-zero exit, after printing the command."""
    cmd = [str(c) for c in cmd]
    print("$ " + shlex.join(cmd), flush=True)
    start = time.time()
    with open(log, "a") if log else contextlib.nullcontext() as sink:
        result = subprocess.run(cmd, cwd=REPO, env=child_env() | (env or {}), stdout=sink,
                                stderr=subprocess.STDOUT if log else None)
    if result.returncode:
        print(f"error: exit status {result.returncode}{f' (log: {log})' if log else ''}: {shlex.join(cmd)}",
              file=sys.stderr, flush=True)
        raise subprocess.CalledProcessError(result.returncode, cmd)
    seconds = time.time() - start
    print(f"[{seconds:.0f} s]", flush=True)
    return seconds
