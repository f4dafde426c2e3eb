"""Fixtures for the launcher tests: tiny training runs and a real local SLURM cluster.

* ``tiny_data``: shards of a few sample documents (GPT-2 tokens), built once per session.
* ``tiny_run(run_dir, **extra)``: the ``--set`` overrides of a seconds-long ZeRO-2 run
  of the tiny GPT (seq 64) on them; ``read_losses(run_dir)`` reads its metrics.jsonl.
* ``reference_losses``: the same run in a single process, the reference every launcher's
  losses are compared with.
* ``slurm_cluster`` (one node, 2 CPUs) and ``slurm_cluster_2n`` (nodes n1, n2 at
  127.0.0.2/127.0.0.3, 1 CPU each): tools/slurm/start_local_cluster.sh on their own state
  dirs and ports (so a cluster started with `make slurm-up` is never touched), stopped at
  the end of the session. They skip only when the SLURM packages cannot be installed (not
  root, no apt), and never under CI=true.
* ``slurm_launch``, ``checked``, ``job_field``, ``wait_for_state``, ``task_logs``: submit
  with ``megacompress launch slurm`` and follow a job through ``scontrol``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distributed_helpers import REPO_ROOT, cpu_env, run_checked
from megacompress.training.checkpoint import SLEEP_BEFORE_COMMIT_ENV

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


def start_cluster(state: Path, ctld_port: int, nodes: int) -> dict[str, str]:
    """Start a private local cluster; yields the environment (SLURM_CONF, PATH with the sacct
    stand-in) for it, and stops it afterwards. ``slurmd`` ports follow ``ctld_port``."""
    env = dict(os.environ, MEGACOMPRESS_SLURM_DIR=str(state), SLURMCTLD_PORT=str(ctld_port),
               SLURMD_PORT=str(ctld_port + 1), SLURM_PARTITION="debug")
    script = REPO_ROOT / "tools/slurm/start_local_cluster.sh"
    start = subprocess.run(["bash", str(script), "--nodes", str(nodes), "--env"], env=env, capture_output=True,
                           text=True, timeout=600)
    if start.returncode == 2 and os.environ.get("CI") != "true":
        pytest.skip(f"SLURM packages cannot be installed here: {start.stderr.strip()}")
    if start.returncode != 0:
        raise AssertionError(f"start_local_cluster.sh failed ({start.returncode}):\n{start.stderr}")
    cluster_env = cpu_env({"MEGACOMPRESS_SLURM_DIR": str(state), "SLURMCTLD_PORT": str(ctld_port),
                           "SLURMD_PORT": str(ctld_port + 1), "SLURM_CONF": str(state / "slurm.conf"),
                           "PATH": f"{REPO_ROOT / 'tools/slurm/bin'}{os.pathsep}{os.environ['PATH']}"})
    try:
        yield cluster_env
    finally:
        subprocess.run(["bash", str(REPO_ROOT / "tools/slurm/stop_local_cluster.sh")], env=env,
                       capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> dict[str, str]:
    """A one-node cluster (this host, every core)."""
    yield from start_cluster(tmp_path_factory.mktemp("slurm"), 6917, nodes=1)


@pytest.fixture(scope="session")
def slurm_cluster_2n(tmp_path_factory) -> dict[str, str]:
    """A two-node cluster: n1 (127.0.0.2) and n2 (127.0.0.3), one core each."""
    yield from start_cluster(tmp_path_factory.mktemp("slurm2n"), 7017, nodes=2)


def slurm_launch(env: dict[str, str], run_dir: Path, *extra: str, wait: bool = True,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """``megacompress launch slurm`` with the tiny config on the ``debug`` partition of ``env``'s cluster."""
    cmd = [sys.executable, "-m", "megacompress", "launch", "slurm", "--config", str(CONFIG), "--partition", "debug",
           "--time", "00:30:00", "--gpus-per-node", "0", "--run-dir", str(run_dir), *extra]
    if wait:
        cmd.append("--wait")
    return subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def checked(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"{proc.args[:2]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def submitted_job(stdout: str) -> str:
    return re.search(r"submitted job (\S+):", stdout).group(1)


def job_field(env: dict[str, str], job_id: str, name: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True)
    match = re.search(rf"\b{name}=(\S+)", out.stdout)
    return match.group(1) if match else ""


def task_logs(run_dir: Path) -> str:
    return "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((run_dir / "slurm").rglob("*_log.*")))


RUNNING_STATES = ("PENDING", "RUNNING", "CONFIGURING")
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def wait_for_state(env: dict[str, str], job_id: str, run_dir: Path, deadline: float,
                   states: tuple[str, ...] = FINAL_STATES) -> str:
    """Poll ``scontrol`` until the job's state is one of ``states``; returns it."""
    while (state := job_field(env, job_id, "JobState")) not in states:
        assert time.monotonic() < deadline, f"job {job_id} stuck in {state}\n{task_logs(run_dir)}"
        time.sleep(0.5)
    return state


def preempt_and_resume(env: dict[str, str], run_dir: Path, *launch_args: str) -> str:
    """Submit a tiny run, send it SIGUSR2 once it has logged a step, release the requeued job
    and wait until it completes; returns the job id (its losses are in ``run_dir``)."""
    # The 6-step job can outrun the signal; holding its step-3 checkpoint commit for 2 s
    # (the trainer's test hook, exported to the job by sbatch) keeps it running until
    # the signal has arrived, so it always stops mid-run.
    env = {**env, SLEEP_BEFORE_COMMIT_ENV: "2"}
    job_id = submitted_job(checked(slurm_launch(env, run_dir, *launch_args, wait=False)))
    deadline = time.monotonic() + 240
    while not ((run_dir / "metrics.jsonl").exists() and read_losses(run_dir)):
        assert time.monotonic() < deadline, f"job {job_id} made no progress\n{task_logs(run_dir)}"
        assert job_field(env, job_id, "JobState") in RUNNING_STATES, task_logs(run_dir)
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", job_id], env=env, check=True)
    # SLURM holds a requeued job for ~2 minutes (Reason=BeginTime); release it now.
    while job_field(env, job_id, "Reason") != "BeginTime":
        assert time.monotonic() < deadline, f"job {job_id} was not requeued\n{task_logs(run_dir)}"
        time.sleep(0.2)
    # Released only once no node is still completing the first run (its steps' exits must not
    # be taken for the second run's).
    while "comp" in subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True).stdout:
        assert time.monotonic() < deadline, f"nodes still completing job {job_id}\n{job_record(env, job_id, run_dir)}"
        time.sleep(0.2)
    # slurmd refuses a launch credential made in the same second as the requeue revoked the job's
    # old one (it compares whole seconds: "Job credential revoked"), which SLURM's own hold avoids.
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env, check=True)
    assert wait_for_state(env, job_id, run_dir, deadline) == "COMPLETED", job_record(env, job_id, run_dir)
    return job_id


def job_record(env: dict[str, str], job_id: str, run_dir: Path) -> str:
    """What to look at when a job went wrong: its SLURM record, the controller's log tail, its task logs."""
    record = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    ctld = Path(env["MEGACOMPRESS_SLURM_DIR"]) / "log" / "slurmctld.log"
    tail = "\n".join(ctld.read_text().splitlines()[-40:]) if ctld.exists() else ""
    return f"{record}\n--- {ctld} (tail)\n{tail}\n{task_logs(run_dir)}"
