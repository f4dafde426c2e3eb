"""megacompress launch slurm across two SLURM nodes (n1 at 127.0.0.2, n2 at 127.0.0.3; one CPU task each).

* a 2-node ZeRO-2 job of the tiny GPT ends with the single-process losses, one rank per
  node, rendezvous at n1's address from SLURM (the node names do not resolve);
* TP=2 across the two nodes ends with the TP=1 losses;
* a 2-node job array runs every sweep entry on both nodes;
* a 2-node job preempted with ``scancel --signal=USR2`` requeues and ends with the
  uninterrupted job's losses;
* a node that dies mid-job (its slurmd, step daemon and task killed) fails the job with a
  message naming the last committed checkpoint; resubmitting the same command resumes
  from it and ends with the uninterrupted losses.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from distributed_helpers import REPO_ROOT
from launch_fixtures import (RUNNING_STATES, checked, job_field, preempt_and_resume, read_losses, set_args,
                             slurm_launch, submitted_job, task_logs, tiny_run, wait_for_state)
from megacompress.training.checkpoint import SLEEP_BEFORE_COMMIT_ENV

REL = 1e-5
TWO_NODES = ("--nodes", "2", "--tasks-per-node", "1")


@pytest.fixture(scope="module")
def zero2_2n(slurm_cluster_2n, tiny_data, tmp_path_factory) -> tuple[Path, str]:
    """An uninterrupted 2-node ZeRO-2 job: (run dir, launcher output with each task's result)."""
    run_dir = tmp_path_factory.mktemp("slurm2n_zero2")
    out = checked(slurm_launch(slurm_cluster_2n, run_dir, *TWO_NODES, *set_args(tiny_run(tiny_data, run_dir))))
    return run_dir, out


@pytest.mark.slurm
@pytest.mark.distributed
def test_two_node_zero2_job_matches_single_process(zero2_2n, reference_losses):
    run_dir, out = zero2_2n
    assert read_losses(run_dir) == pytest.approx(reference_losses, rel=REL)
    # one rank per node; both met at n1's NodeAddr, not at its (unresolvable) name
    assert "'rank': 0, 'world_size': 2" in out and "'node': 'n1', 'master': '127.0.0.2:" in out, out
    assert "'rank': 1, 'world_size': 2" in out and "'node': 'n2', 'master': '127.0.0.2:" in out, out


@pytest.mark.slurm
@pytest.mark.distributed
def test_tensor_parallel_across_two_nodes_matches_tp1(slurm_cluster_2n, tiny_data, reference_losses, tmp_path):
    run_dir = tmp_path / "run"
    overrides = tiny_run(tiny_data, run_dir, **{"parallel.tensor_parallel_size": 2, "parallel.zero_stage": 1})
    checked(slurm_launch(slurm_cluster_2n, run_dir, *TWO_NODES, *set_args(overrides)))
    assert read_losses(run_dir) == pytest.approx(reference_losses, rel=REL)


@pytest.mark.slurm
@pytest.mark.distributed
def test_two_node_job_array_runs_every_sweep_entry(slurm_cluster_2n, tiny_data, zero2_2n, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("- {optimizer.lr: 1.0e-3}\n- {optimizer.lr: 3.0e-3}\n")
    run_dir = tmp_path / "run"
    overrides = [o for o in tiny_run(tiny_data, run_dir) if not o.startswith("logging.run_dir=")]
    out = checked(slurm_launch(slurm_cluster_2n, run_dir, *TWO_NODES, "--array", str(sweep), *set_args(overrides)))
    assert len(re.findall(r"submitted job \d+_\d:", out)) == 2
    assert out.count("'node': 'n2', 'master': '127.0.0.2:") == 2, out
    first, second = read_losses(run_dir / "task_0"), read_losses(run_dir / "task_1")
    assert first == pytest.approx(read_losses(zero2_2n[0]), rel=REL)  # entry 0 is the config's own lr
    assert second[0] == pytest.approx(first[0], rel=REL)
    assert second[-1] != pytest.approx(first[-1], rel=1e-3)  # a different lr trains differently


@pytest.mark.slurm
@pytest.mark.distributed
def test_two_node_preempted_job_requeues_and_resumes(slurm_cluster_2n, tiny_data, zero2_2n, tmp_path):
    run_dir = tmp_path / "run"
    job_id = preempt_and_resume(slurm_cluster_2n, run_dir, *TWO_NODES, *set_args(tiny_run(tiny_data, run_dir)))
    assert job_field(slurm_cluster_2n, job_id, "Restarts") == "1"
    assert f"Requeued job {job_id}" in task_logs(run_dir)
    assert read_losses(run_dir) == pytest.approx(read_losses(zero2_2n[0]), rel=REL)


def _environ(pid: str) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def kill_node(env: dict[str, str], node: str, job_id: str) -> None:
    """SIGKILL what a dead machine would lose: the node's slurmd, the job's tasks on it and
    their step daemon (the tasks' parent)."""
    tasks = [int(p) for p in os.listdir("/proc") if p.isdigit()
             and {"SLURM_JOB_ID": job_id, "SLURMD_NODENAME": node}.items() <= _environ(p).items()]
    assert tasks, f"no task of job {job_id} on {node}"
    stepds = {int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for pid in tasks}
    slurmd = int((Path(env["MEGACOMPRESS_SLURM_DIR"]) / "pids" / f"slurmd.{node}.pid").read_text())
    for pid in (slurmd, *stepds, *tasks):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.slurm
@pytest.mark.distributed
def test_node_death_fails_job_and_resubmitting_resumes(slurm_cluster_2n, tiny_data, zero2_2n, tmp_path):
    run_dir = tmp_path / "run"
    args = [*TWO_NODES, *set_args(tiny_run(tiny_data, run_dir))]
    # Rank 0 holds each checkpoint commit for 2 s, so the job is still running after step 3's.
    env = {**slurm_cluster_2n, SLEEP_BEFORE_COMMIT_ENV: "2"}
    job_id = submitted_job(checked(slurm_launch(env, run_dir, *args, wait=False)))
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while not (latest.exists() and latest.read_text().strip() == "global_step3"):
        assert time.monotonic() < deadline, f"job {job_id} made no checkpoint\n{task_logs(run_dir)}"
        assert job_field(env, job_id, "JobState") in RUNNING_STATES, task_logs(run_dir)
        time.sleep(0.1)
    try:
        kill_node(env, "n2", job_id)
        # Failed, not requeued (--no-kill: srun's error ends the batch script).
        assert wait_for_state(env, job_id, run_dir, deadline) == "FAILED", task_logs(run_dir)
        rank0 = next((run_dir / "slurm" / job_id).glob("*_0_log.err")).read_text()
        assert f"on rank 0 (node n1, job {job_id}) failed:" in rank0, rank0[-3000:]
        assert f"resumes from {run_dir / 'checkpoints' / 'global_step3'}" in rank0, rank0[-3000:]
    finally:  # bring n2 back (its slurmd alone) for the next tests and the resubmission
        subprocess.run(["bash", str(REPO_ROOT / "tools/slurm/start_local_cluster.sh"), "--nodes", "2"],
                       env=env, check=True, capture_output=True, timeout=120)
    out = checked(slurm_launch(slurm_cluster_2n, run_dir, *args))
    assert "resumed from" in task_logs(run_dir) and "'node': 'n2'" in out
    assert read_losses(run_dir) == pytest.approx(read_losses(zero2_2n[0]), rel=REL)
