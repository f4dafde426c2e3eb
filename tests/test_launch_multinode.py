"""torchrun and deepspeed launchers across two "nodes" on loopback, 1 process each.

Both runs must reproduce the single-process losses of the same tiny ZeRO-2 run (same
global batch: DP=2 x micro 2 vs DP=1 x micro 2 x 2 accumulation steps). The command
building and config/hostfile validation are unit-tested without processes.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from distributed_helpers import REPO_ROOT, cpu_env, free_port
from launch_fixtures import CONFIG, read_losses, set_args, tiny_run
from launchers import comm_volume, deepspeed_launch, torchrun
from launchers.common import LaunchError, load_sweep

REL = 1e-5


def run_nodes(commands: list[list[str]], timeout: float = 300) -> None:
    """Start one launcher per node at once (they rendezvous), wait for all, raise with logs."""
    procs = [subprocess.Popen(cmd, env=cpu_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for cmd in commands]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for node, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"node {node} failed ({proc.returncode}):\n{out[-6000:]}"


@pytest.mark.distributed
def test_torchrun_two_loopback_nodes(tiny_data, reference_losses, tmp_path):
    port = free_port()
    run_dir = tmp_path / "run"
    commands = [[sys.executable, "launchers/torchrun.py", "--nnodes", "2", "--node-rank", str(rank),
                 "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
                 "--config", str(CONFIG), *set_args(tiny_run(tiny_data, run_dir))] for rank in (0, 1)]
    run_nodes(commands)
    assert read_losses(run_dir) == pytest.approx(reference_losses, rel=REL)


@pytest.mark.distributed
def test_deepspeed_two_loopback_nodes(tiny_data, reference_losses, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = free_port()
    run_dir = tmp_path / "run"
    commands = [[sys.executable, "launchers/deepspeed_launch.py", "--hostfile", str(hostfile), "--num-gpus", "1",
                 "--no-ssh", "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
                 "--config", str(CONFIG), *set_args(tiny_run(tiny_data, run_dir))] for rank in (0, 1)]
    run_nodes(commands)
    assert read_losses(run_dir) == pytest.approx(reference_losses, rel=REL)


def test_torchrun_command_and_validation(tmp_path, capsys):
    args = torchrun.build_parser().parse_args(
        ["--nnodes", "2", "--node-rank", "1", "--nproc-per-node", "2", "--master-addr", "10.0.0.1",
         "--config", str(CONFIG), "--set", "schedule.global_batch_size=16", "--run-dir", str(tmp_path)])
    cmd = torchrun.build_command(args)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--node-rank=1", "--nproc-per-node=2", "--master-addr=10.0.0.1"} <= set(cmd)
    assert cmd[cmd.index("-m", 3):][:4] == ["-m", "megacompress.train", "--config", str(CONFIG)]
    assert f"logging.run_dir={tmp_path.resolve()}" in cmd
    # global batch 16 = micro 4 x 4 ranks; 18 does not divide: refused before anything starts
    assert torchrun.main(["--nproc-per-node", "4", "--config", str(CONFIG), "--set", "schedule.global_batch_size=18",
                          "--dry-run"]) == 2
    assert "global batch size 18 is not a positive multiple" in capsys.readouterr().err
    assert torchrun.main(["--config", str(CONFIG), "--set", "optimizer.lrr=1", "--dry-run"]) == 2
    assert "unknown config key 'optimizer.lrr' (did you mean 'optimizer.lr'?)" in capsys.readouterr().err


def test_deepspeed_command_and_hostfile_errors(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nnode0 slots=2\nnode1 slots=2  # second\n")
    assert deepspeed_launch.read_hostfile(hostfile) == {"node0": 2, "node1": 2}
    args = deepspeed_launch.build_parser().parse_args(
        ["--hostfile", str(hostfile), "--no-ssh", "--node-rank", "1", "--master-addr", "127.0.0.1",
         "--config", str(CONFIG)])
    cmd = deepspeed_launch.build_command(args)
    assert {"--no_ssh", "--node_rank=1", "--master_addr=127.0.0.1", "--no_local_rank"} <= set(cmd)
    assert cmd[cmd.index("--module"):][:4] == ["--module", "megacompress.train", "--config", str(CONFIG)]

    bad = tmp_path / "bad"
    bad.write_text("node0 slots=two\n")
    with pytest.raises(LaunchError, match=r"bad:1: expected 'HOST slots=N'"):
        deepspeed_launch.read_hostfile(bad)
    args.node_rank = 2
    with pytest.raises(LaunchError, match=r"--no-ssh needs --node-rank in \[0, 2\)"):
        deepspeed_launch.build_command(args)
    # 3 ranks (slots 2 + 1 with --num-gpus capping nothing) cannot split a global batch of 16
    hostfile.write_text("node0 slots=2\nnode1 slots=1\n")
    args.node_rank = 0
    with pytest.raises(LaunchError, match="global batch size 16 is not a positive multiple"):
        deepspeed_launch.build_command(args)


def test_sweep_file(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("- {optimizer.lr: 1.0e-3}\n- {optimizer.lr: 3.0e-4, seed: 7, model.preset: tiny}\n")
    assert load_sweep(sweep) == [["optimizer.lr=0.001"], ["optimizer.lr=0.0003", "seed=7", "model.preset=tiny"]]
    sweep.write_text("optimizer.lr: 1.0e-3\n")
    with pytest.raises(LaunchError, match="must be a non-empty YAML list of mappings"):
        load_sweep(sweep)


def test_comm_volume_refuses_an_empty_table(capsys):
    # 64 sequences cannot be split into micro batches of 8 over 64 or 32 DP ranks.
    assert comm_volume.main(["--models", "baseline-12", "--gpus", "64", "--global-batch", "64"]) == 2
    assert "no layout fits" in capsys.readouterr().err
    assert comm_volume.main(["--models", "baseline-12", "--gpus", "64", "--global-batch", "512", "--zero", "1"]) == 0
    assert "baseline-12" in capsys.readouterr().out
