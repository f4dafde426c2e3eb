"""torchrun and deepspeed launchers across two "nodes" on loopback, 1 process each.

Both runs must reproduce the single-process losses of the same tiny ZeRO-2 run (same
global batch: DP=2 x micro 2 vs DP=1 x micro 2 x 2 accumulation steps). The command
building and config/hostfile validation are unit-tested without processes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from distributed_helpers import REPO_ROOT, cpu_env, free_port
from launch_fixtures import CONFIG, read_losses, set_args, tiny_run
from megacompress import cli
from megacompress.launch import comm_volume, deepspeed_launch, slurm, torchrun
from megacompress.launch.common import LaunchError, load_sweep

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


def data_args(data) -> list[str]:
    return set_args([f"data.data_path=[{data / 'train_text_document'}]", f"eval.data_path=[{data / 'valid_text_document'}]"])


def test_torchrun_command_and_validation(tiny_data, tmp_path, capsys):
    args = torchrun.build_parser().parse_args(
        ["--nnodes", "2", "--node-rank", "1", "--nproc-per-node", "2", "--master-addr", "10.0.0.1",
         "--config", str(CONFIG), "--set", "schedule.global_batch_size=16", "--run-dir", str(tmp_path),
         *data_args(tiny_data)])
    cmd, run_dir = torchrun.build_command(args)
    assert run_dir == tmp_path.resolve()
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--node-rank=1", "--nproc-per-node=2", "--master-addr=10.0.0.1"} <= set(cmd)
    assert cmd[cmd.index("-m", 3):][:4] == ["-m", "megacompress.train", "--config", str(CONFIG)]
    assert f"logging.run_dir={tmp_path.resolve()}" in cmd
    # global batch 16 = micro 4 x 4 ranks; 18 does not divide: refused before anything starts
    assert cli.run(torchrun.main, ["--nproc-per-node", "4", "--config", str(CONFIG), "--set",
                                   "schedule.global_batch_size=18", "--dry-run"]) == 2
    assert "global batch size 18 is not a positive multiple" in capsys.readouterr().err
    assert cli.run(torchrun.main, ["--config", str(CONFIG), "--set", "optimizer.lrr=1", "--dry-run"]) == 2
    assert "unknown config key 'optimizer.lrr' (did you mean 'optimizer.lr'?)" in capsys.readouterr().err


def test_deepspeed_command_and_hostfile_errors(tiny_data, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nnode0 slots=2\nnode1 slots=2  # second\n")
    assert deepspeed_launch.read_hostfile(hostfile) == {"node0": 2, "node1": 2}
    args = deepspeed_launch.build_parser().parse_args(
        ["--hostfile", str(hostfile), "--no-ssh", "--node-rank", "1", "--master-addr", "127.0.0.1",
         "--config", str(CONFIG), *data_args(tiny_data)])
    cmd = deepspeed_launch.build_command(args).cmd
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


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed", "slurm"])
def test_missing_shard_fails_before_anything_starts(launcher, tiny_data, tmp_path, capsys):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\n")
    missing = tmp_path / "nowhere" / "valid_text_document"
    common = ["--config", str(CONFIG), "--run-dir", str(tmp_path / "run"),
              "--set", f"data.data_path=[{tiny_data / 'train_text_document'}]", "--set", f"eval.data_path=[{missing}]"]
    main, extra = {"torchrun": (torchrun.main, ["--dry-run"]),
                   "deepspeed": (deepspeed_launch.main, ["--hostfile", str(hostfile), "--dry-run"]),
                   "slurm": (slurm.main, ["--partition", "debug", "--time", "10", "--tasks-per-node", "2"])}[launcher]
    assert cli.run(main, [*common, *extra]) == 2
    err = capsys.readouterr().err
    assert f"error: shard not found: {missing}" in err, err
    assert f"make it with python tools/preprocess_data.py --input FILES --output-prefix {missing.parent / 'valid'}" in err
    assert not (tmp_path / "run").exists()  # nothing was submitted or started


@pytest.mark.distributed
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2], ids=["SIGTERM", "SIGUSR2"])
def test_signal_to_torchrun_launcher_checkpoints_with_exit_75(sig, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    overrides = tiny_run(tiny_data, run_dir, **{"schedule.train_steps": 200, "checkpoint.interval": 0})
    proc = subprocess.Popen([sys.executable, "launchers/torchrun.py", "--nproc-per-node", "1", "--master-port",
                             str(free_port()), "--config", str(CONFIG), *set_args(overrides)],
                            env=cpu_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ((run_dir / "metrics.jsonl").exists() and read_losses(run_dir)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-4000:]
            time.sleep(0.2)
        proc.send_signal(sig)
        out = proc.communicate(timeout=240)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, out[-4000:]
    status = json.loads((run_dir / "exit_status.json").read_text())
    assert status["reason"] == "signal" and status["signal"] == sig.name
    assert f"checkpoint saved at step {status['step']}" in out and "rerun the same command to resume" in out, out
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"global_step{status['step']}"


def test_sweep_file(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("- {optimizer.lr: 1.0e-3}\n- {optimizer.lr: 3.0e-4, seed: 7, model.preset: tiny}\n")
    assert load_sweep(sweep) == [["optimizer.lr=0.001"], ["optimizer.lr=0.0003", "seed=7", "model.preset=tiny"]]
    sweep.write_text("optimizer.lr: 1.0e-3\n")
    with pytest.raises(LaunchError, match="must be a non-empty YAML list of mappings"):
        load_sweep(sweep)


def test_comm_volume_refuses_an_empty_table(capsys):
    # 64 sequences cannot be split into micro batches of 8 over 64 or 32 DP ranks.
    assert cli.run(comm_volume.main, ["--models", "baseline-12", "--gpus", "64", "--global-batch", "64"]) == 2
    assert "no layout fits" in capsys.readouterr().err
    assert comm_volume.main(["--models", "baseline-12", "--gpus", "64", "--global-batch", "512", "--zero", "1"]) == 0
    assert "baseline-12" in capsys.readouterr().out


def test_comm_volume_follows_what_deepspeed_sends():
    # The layouts benchmarks/scaling.py measured (docs/scaling.md): 2 ranks, accumulation A = 2.
    psi, shard = 1000, 1000 * 4 / 2  # a ring step moves half the buffer at n = 2
    layout = {z: comm_volume.Layout(gpus=2, tp=1, zero=z, global_batch=8, micro_batch=2, seq_len=64) for z in range(4)}
    assert [comm_volume.dp_bytes(psi, layout[z], 4) / shard for z in range(4)] == [2, 3, 5, 4]
    big = comm_volume.Layout(gpus=2, tp=1, zero=3, global_batch=8, micro_batch=2, seq_len=64)
    assert comm_volume.dp_bytes(2 * 10**9, big, 4) == 6 * 2e9 * 4 / 2  # beyond the reuse distance: 3 A
    config = comm_volume.ModelConfig.from_preset("tiny", max_seq_len=64)
    tp2 = comm_volume.Layout(gpus=2, tp=2, zero=1, global_batch=8, micro_batch=2, seq_len=64)
    tokens = 2 * 64
    # (5 L + 2) activation all-reduces + 3 cross-entropy ones per micro batch, 4 micro batches
    assert comm_volume.tp_bytes(config, tp2, 4) == 4 * ((5 * 2 + 2) * tokens * 64 + 3 * tokens) * 4
