"""megacompress launch slurm (megacompress.launch.slurm) on a real one-node local SLURM cluster (submitit, 2 CPU tasks, gloo, ZeRO-2).

* a 2-task job trains the tiny GPT, writes metrics and checkpoints, and matches the
  single-process losses;
* a job sent SIGUSR2 mid-run (as SLURM does before a time limit) checkpoints, requeues
  itself through submitit, resumes from ``latest`` and ends with the same losses;
* an invalid config fails at submission with the trainer's validation message (no
  cluster needed: validation runs before anything talks to SLURM).

Two nodes (jobs across nodes, TP across nodes, arrays, a node dying): test_slurm_multinode.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from distributed_helpers import REPO_ROOT
from launch_fixtures import (CONFIG, TRAIN_STEPS, checked, job_field, preempt_and_resume, read_losses, set_args,
                             slurm_launch, task_logs, tiny_run)
from megacompress import cli
from megacompress.launch import slurm

REL = 1e-5


@pytest.fixture(scope="module")
def zero2_job(slurm_cluster, tiny_data, tmp_path_factory) -> Path:
    """An uninterrupted 2-task ZeRO-2 job; returns its run dir."""
    run_dir = tmp_path_factory.mktemp("slurm_zero2")
    checked(slurm_launch(slurm_cluster, run_dir, "--tasks-per-node", "2", *set_args(tiny_run(tiny_data, run_dir))))
    return run_dir


@pytest.mark.slurm
@pytest.mark.distributed
def test_zero2_job_trains_and_checkpoints(zero2_job, reference_losses):
    assert read_losses(zero2_job) == pytest.approx(reference_losses, rel=REL)
    checkpoints = zero2_job / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == f"global_step{TRAIN_STEPS}"
    assert (checkpoints / f"global_step{TRAIN_STEPS}").is_dir()
    assert list((zero2_job / "slurm").glob("*/*_1_log.out")), "no log of task 1"


@pytest.mark.slurm
@pytest.mark.distributed
def test_preempted_job_requeues_and_resumes(slurm_cluster, tiny_data, zero2_job, tmp_path):
    run_dir = tmp_path / "run"
    job_id = preempt_and_resume(slurm_cluster, run_dir, "--tasks-per-node", "2",
                                *set_args(tiny_run(tiny_data, run_dir)))
    assert job_field(slurm_cluster, job_id, "Restarts") == "1"
    logs = task_logs(run_dir)
    # submitit saw a preemption (not a time-out, which would count against --max-requeues)
    assert f"Caught signal SIGUSR2 on {socket.gethostname()}: this job is preempted" in logs, logs
    assert f"Requeued job {job_id}" in logs and "resumed from" in logs, logs
    assert read_losses(run_dir) == pytest.approx(read_losses(zero2_job), rel=REL)
    assert read_losses(run_dir)[-1] == read_losses(zero2_job)[-1]


def test_invalid_config_fails_at_submission(tmp_path, capsys):
    base = ["--config", str(CONFIG), "--partition", "debug", "--time", "00:30:00", "--gpus-per-node", "0",
            "--run-dir", str(tmp_path / "run")]
    assert cli.run(slurm.main, [*base, "--tasks-per-node", "2", "--set", "optimizer.lrr=1e-3"]) == 2
    assert "unknown config key 'optimizer.lrr' (did you mean 'optimizer.lr'?)" in capsys.readouterr().err
    # global batch 16 over 3 ranks with micro batch 4 cannot be split
    assert cli.run(slurm.main, [*base, "--tasks-per-node", "3"]) == 2
    assert "global batch size 16 is not a positive multiple" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing was submitted


@pytest.mark.parametrize("text,minutes", [("30", 30), ("10:00", 10), ("10:30", 11), ("01:30:00", 90),
                                          ("1-2", 1560), ("1-02:30", 1590), ("2-00:00:01", 2881)])
def test_parse_time_uses_sbatch_formats(text, minutes):
    # sbatch reads two fields as MM:SS (HH:MM only after a day count): "10:00" is ten minutes.
    assert slurm.parse_time(text) == minutes



def test_stop_script_signals_only_its_own_daemons(tmp_path):
    # slurmd's pid file names a live `slurmd` (a renamed `sleep`); slurmctld's pid file names a
    # reused pid now running something else, which the stop script must leave alone.
    (tmp_path / "pids").mkdir()
    daemon_exe = tmp_path / "slurmd"
    daemon_exe.symlink_to(shutil.which("sleep"))
    # Started through a shell that exits at once, like the real daemons: not our child, so
    # it is reaped as soon as it dies instead of lingering as a zombie.
    daemon = int(subprocess.run(["sh", "-c", '"$0" 60 >/dev/null 2>&1 & echo $!', str(daemon_exe)],
                                capture_output=True, text=True, check=True).stdout)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "pids" / "slurmd.n1.pid").write_text(f"{daemon}\n")
        (tmp_path / "pids" / "slurmctld.pid").write_text(f"{stranger.pid}\n")
        subprocess.run(["bash", str(REPO_ROOT / "tools/slurm/stop_local_cluster.sh")], check=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "MEGACOMPRESS_SLURM_DIR": str(tmp_path)})
        assert not Path(f"/proc/{daemon}").exists()
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
        if Path(f"/proc/{daemon}").exists():
            os.kill(daemon, signal.SIGKILL)
