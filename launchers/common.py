"""Pieces every launcher shares: the training command, config validation, sweeps.

A launcher never trains by itself: it starts ``python -m megacompress.train --config CFG
--set k=v ...`` (or, under SLURM, calls the same entry point in-process on every task).
Configs are validated here, before anything is submitted or spawned, so a bad key or
value fails on the login node with the trainer's own validation message.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_MODULE = "megacompress.train"


class LaunchError(RuntimeError):
    """A launch request that cannot work (bad config, bad sweep file, bad hostfile)."""


def overrides_from_dict(values: dict) -> list[str]:
    """A sweep entry ``{"optimizer.lr": 3e-4}`` -> ``["optimizer.lr=0.0003"]``.

    Values are written back as YAML text (lists in flow style, ``[a, b]``), which is what
    the trainer's ``--set`` parser reads; it converts them to the field types.
    """
    out = []
    for key, value in values.items():
        if isinstance(value, dict):
            raise LaunchError(f"override {key!r}: a value cannot be a mapping, got {value!r}")
        text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True)
        out.append(f"{key}={text.strip().removesuffix('...').strip()}")
    return out


@dataclass
class TrainCommand:
    """What a launcher runs on every rank: ``python -m megacompress.train`` + ``argv()``."""

    config: str
    overrides: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        args = ["--config", self.config]
        for item in self.overrides:
            args += ["--set", item]
        return args

    def with_overrides(self, extra: list[str]) -> "TrainCommand":
        return TrainCommand(self.config, [*self.overrides, *extra])


class Launch(NamedTuple):
    """What a process launcher runs, and the trainer's run dir (where exit_status.json appears)."""

    cmd: list[str]
    run_dir: Path


def run_dir_override(run_dir: str | Path) -> str:
    """The override that points the trainer's outputs (checkpoints, metrics) at ``run_dir``."""
    return f"logging.run_dir={run_dir}"


def validate(command: TrainCommand, world_size: int | None = None, *, on_gpu: bool = False):
    """Load and validate the config exactly as the trainer will; returns the ``TrainConfig``.

    With ``world_size`` the checks that depend on it run too (tensor-parallel size divides
    the world; global batch = micro batch x DP size x accumulation steps; the DeepSpeed
    template exists). Raises LaunchError with the trainer's message, so that nothing
    invalid reaches a cluster.
    """
    from megacompress.training.config import TrainConfigError, load_config
    from megacompress.training.ds_config import build_ds_config

    from megacompress.data.indexed import ShardError
    from megacompress.data.registry import DataConfigError

    try:
        config = load_config(command.config, command.overrides)
        if world_size is not None:
            tp = config.parallel.tensor_parallel_size
            if world_size % tp:
                raise TrainConfigError(f"world size {world_size} is not a multiple of "
                                       f"parallel.tensor_parallel_size {tp}")
            build_ds_config(config, world_size // tp, on_gpu=on_gpu)
        check_data_paths(config)
    except (TrainConfigError, DataConfigError, ShardError) as err:
        raise LaunchError(str(err)) from err
    return config


def check_data_paths(config) -> None:
    """Every shard the config reads (``data.data_path``, ``eval.data_path``) exists and is
    readable from here: a missing one fails before submission, not on a node after the queue.
    Raises ShardError "shard not found: PREFIX (...); make it with ..."."""
    from megacompress.data.builder import parse_data_path
    from megacompress.data.indexed import ShardError, bin_path, idx_path, require_shard

    for key, paths in (("data.data_path", config.data.data_path), ("eval.data_path", config.eval.data_path)):
        if key == "eval.data_path" and not paths:  # no separate validation shards
            continue
        for prefix, _ in parse_data_path(paths):
            require_shard(prefix)
            for path in (bin_path(prefix), idx_path(prefix)):
                if not os.access(path, os.R_OK):
                    raise ShardError(f"shard not readable: {path} ({key}): check its permissions")


def load_sweep(path: str | Path) -> list[list[str]]:
    """A sweep file: a YAML list of override mappings, one per job-array task.

    ``- {optimizer.lr: 1.0e-3}`` / ``- {optimizer.lr: 3.0e-4, train.seed: 2}`` -> one list of
    ``k=v`` strings per task, in file order (task i of the array gets entry i).
    """
    path = Path(path)
    try:
        entries = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise LaunchError(f"cannot read sweep file {path}: {err}") from err
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise LaunchError(f"sweep file {path} must be a non-empty YAML list of mappings (one per task)")
    return [overrides_from_dict(entry) for entry in entries]


def run_entry_point(module: str, argv: list[str]) -> int:
    """Call ``module.main(argv)`` in this process and return its exit status (SystemExit included)."""
    entry = importlib.import_module(module)
    try:
        status = entry.main(argv)
    except SystemExit as exit_:
        status = exit_.code
    if isinstance(status, str):
        print(status, file=sys.stderr)  # sys.exit("message") convention: message, status 1
        return 1
    # None, or a result such as preprocessing's summary: success
    return status if isinstance(status, int) else 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--config", required=True, help="training config YAML (e.g. configs/tiny_gpt.yaml)")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="config override, repeatable (e.g. --set optimizer.lr=3e-4)")


def command_from_args(args: argparse.Namespace) -> TrainCommand:
    return TrainCommand(args.config, list(args.overrides))


def cpu_environment(threads: int = 1) -> dict[str, str]:
    """What every rank on a CPU node needs: DeepSpeed's CPU accelerator, one thread per rank
    unless told otherwise (ranks share the node's cores)."""
    return {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": str(threads)}


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by the process launchers (torchrun, deepspeed)."""
    group = parser.add_argument_group("launch")
    group.add_argument("--run-dir", default=None,
                       help="checkpoints/metrics dir (sets logging.run_dir; default: the config's)")
    group.add_argument("--module", default=TRAIN_MODULE, help="entry-point module run on every rank")
    group.add_argument("--dry-run", action="store_true", help="validate, print the command, do not run it")


def rank_processes(root: int) -> list[int]:
    """The ranks a process launcher started below ``root``: descendants with RANK in their
    environment whose parent has none (a rank's own children, e.g. data loader workers, inherit it)."""
    parents, has_rank = {}, {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        has_rank[int(entry)] = b"\0RANK=" in b"\0" + environ
    def below_root(pid: int) -> bool:
        while pid in parents and pid != root:
            pid = parents[pid]
        return pid == root
    return [pid for pid, ranked in has_rank.items()
            if ranked and not has_rank.get(parents[pid], False) and below_root(pid)]


def run_launcher(cmd: list[str], run_dir: Path) -> int:
    """Run ``cmd`` (torchrun / deepspeed) as a child and return its exit status, or
    `EXIT_REQUEUE` (75) when the trainer recorded a signal-triggered checkpoint in
    ``RUN_DIR/exit_status.json`` during this run (torchrun itself exits 1 then).

    SIGTERM and SIGUSR2 sent to this process go to the ranks themselves: the trainer
    checkpoints and stops, and torchrun is not torn down by a signal of its own (SIGUSR2
    would kill it). Ctrl-C reaches every process of the terminal's group without us.
    """
    from megacompress.training.signals import EXIT_REQUEUE

    started = time.time()
    child = subprocess.Popen(cmd)

    def forward(signum, _frame):
        for pid in rank_processes(child.pid) or [child.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(sig, forward)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    status = child.wait()
    try:
        record = json.loads((run_dir / "exit_status.json").read_text())
    except (OSError, ValueError):
        return status
    if record.get("reason") == "signal" and record.get("time", 0) >= started:
        print(f"{record.get('signal')}: checkpoint saved at step {record.get('step')} ({record.get('checkpoint')}); "
              f"rerun the same command to resume (exit status {EXIT_REQUEUE})", file=sys.stderr, flush=True)
        return EXIT_REQUEUE
    return status


def print_or_run(launch: Launch, dry_run: bool, *, gpus: bool) -> int:
    """Print the command; unless ``dry_run``, run it (`run_launcher`) with the CPU environment."""
    print(" ".join(shlex.quote(c) for c in launch.cmd), flush=True)
    if dry_run:
        return 0
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if not gpus:
        for key, value in cpu_environment().items():
            os.environ.setdefault(key, value)
    return run_launcher(launch.cmd, launch.run_dir)


def launch_main(parser: argparse.ArgumentParser, build_command, argv: list[str] | None = None) -> int:
    """``main`` of a command-building launcher: parse, validate and build (a `Launch`), then print and run.

    A config or launch error (a missing shard included) prints ``error: ...`` and returns 2
    before anything starts.
    """
    args = parser.parse_args(argv)
    try:
        launch = build_command(args)
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return print_or_run(launch, args.dry_run, gpus=args.gpus)
