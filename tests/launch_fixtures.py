"""Fixtures for the launcher tests: tiny training runs and a real local SLURM cluster.

* ``tiny_data``: shards of a few sample documents (GPT-2 tokens), built once per session.
* ``tiny_run(run_dir, **extra)``: the ``--set`` overrides of a seconds-long ZeRO-2 run
  of the tiny GPT (seq 64) on them; ``read_losses(run_dir)`` reads its metrics.jsonl.
* ``reference_losses``: the same run in a single process, the reference every launcher's
  losses are compared with.
* ``slurm_cluster``: starts tools/slurm/start_local_cluster.sh on its own state dir and
  ports (so a cluster started with `make slurm-up` is never touched) and stops it at the
  end of the session. Skips only when the SLURM packages cannot be installed (not root,
  no apt), and never under CI=true.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distributed_helpers import REPO_ROOT, cpu_env, run_checked

CONFIG = REPO_ROOT / "configs" / "tiny_gpt.yaml"
TRAIN_STEPS = 6


def tiny_run(data: Path, run_dir: Path, **extra) -> list[str]:
    """Overrides for a tiny ZeRO-2 run: global batch 4 (micro 2), seq 64, checkpoint every 3 steps."""
    settings = {
        "data.data_path": f"[{data / 'train_text_document'}]",
        "eval.data_path": f"[{data / 'valid_text_document'}]",
        "eval.interval": 0,
        "model.max_seq_len": 64,
        "schedule.train_steps": TRAIN_STEPS,
        "schedule.warmup_steps": 1,
        "schedule.global_batch_size": 4,
        "schedule.micro_batch_size": 2,
        "parallel.zero_stage": 2,
        "checkpoint.interval": 3,
        "logging.run_dir": run_dir,
        "logging.log_interval": 1,
        "logging.progress_bar": "false",
        **extra,
    }
    return [f"{key}={value}" for key, value in settings.items()]


def set_args(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def read_losses(run_dir: Path) -> list[float]:
    """Training losses by step from RUN_DIR/metrics.jsonl (a resumed run's repeated steps:
    the last record wins, so a resumed run reads like an uninterrupted one)."""
    by_step = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("split", "train") == "train" and "loss" in record:
            by_step[record["step"]] = record["loss"]
    return [by_step[step] for step in sorted(by_step)]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("launch_data")
    for split, count in (("train", 20), ("valid", 5)):
        lines = (REPO_ROOT / "data" / "sample" / f"{split}.jsonl").read_text().splitlines()[:count]
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        run_checked([sys.executable, "-m", "megacompress.data.preprocess", "--input", str(out / f"{split}.jsonl"),
                     "--output-prefix", str(out / split), "--append-eod"])
    return out


@pytest.fixture(scope="session")
def reference_losses(tiny_data, tmp_path_factory) -> list[float]:
    run_dir = tmp_path_factory.mktemp("launch_reference")
    run_checked([sys.executable, "-m", "megacompress.train", "--config", str(CONFIG),
                 *set_args(tiny_run(tiny_data, run_dir))], timeout=300)
    losses = read_losses(run_dir)
    assert len(losses) == TRAIN_STEPS
    return losses


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> dict[str, str]:
    """Environment (SLURM_CONF, PATH with the sacct stand-in) for a private local cluster."""
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, MEGACOMPRESS_SLURM_DIR=str(state), SLURMCTLD_PORT="6917", SLURMD_PORT="6918",
               SLURM_PARTITION="debug")
    start = subprocess.run(["bash", str(REPO_ROOT / "tools/slurm/start_local_cluster.sh"), "--env"],
                           env=env, capture_output=True, text=True, timeout=600)
    if start.returncode == 2 and os.environ.get("CI") != "true":
        pytest.skip(f"SLURM packages cannot be installed here: {start.stderr.strip()}")
    if start.returncode != 0:
        raise AssertionError(f"start_local_cluster.sh failed ({start.returncode}):\n{start.stderr}")
    cluster_env = cpu_env({"MEGACOMPRESS_SLURM_DIR": str(state),
                           "SLURM_CONF": str(state / "slurm.conf"),
                           "PATH": f"{REPO_ROOT / 'tools/slurm/bin'}{os.pathsep}{os.environ['PATH']}"})
    try:
        yield cluster_env
    finally:
        subprocess.run(["bash", str(REPO_ROOT / "tools/slurm/stop_local_cluster.sh")], env=env,
                       capture_output=True, timeout=120)
