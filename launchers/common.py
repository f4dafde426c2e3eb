"""Pieces every launcher shares: the training command, config validation, sweeps.

A launcher never trains by itself: it starts ``python -m megacompress.train --config CFG
--set k=v ...`` (or, under SLURM, calls the same entry point in-process on every task).
Configs are validated here, before anything is submitted or spawned, so a bad key or
value fails on the login node with the trainer's own validation message.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

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

    try:
        config = load_config(command.config, command.overrides)
        if world_size is not None:
            tp = config.parallel.tensor_parallel_size
            if world_size % tp:
                raise TrainConfigError(f"world size {world_size} is not a multiple of "
                                       f"parallel.tensor_parallel_size {tp}")
            build_ds_config(config, world_size // tp, on_gpu=on_gpu)
    except TrainConfigError as err:
        raise LaunchError(str(err)) from err
    return config


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
    if status is None:
        return 0
    if isinstance(status, int):
        return status
    print(status, file=sys.stderr)  # sys.exit("message") convention: message, status 1
    return 1


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


def exec_or_print(cmd: list[str], dry_run: bool, *, gpus: bool) -> int:
    """Print the command; unless ``dry_run``, replace this process with it.

    Replacing (not wrapping) the launcher process means SIGTERM/SIGINT from a scheduler or
    a terminal reach torchrun/deepspeed directly, which forward them to every rank.
    """
    print(" ".join(shlex.quote(c) for c in cmd), flush=True)
    if dry_run:
        return 0
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if not gpus:
        for key, value in cpu_environment().items():
            os.environ.setdefault(key, value)
    os.execvp(cmd[0], cmd)
    raise AssertionError("unreachable: execvp returned")


def launch_main(parser: argparse.ArgumentParser, build_command, argv: list[str] | None = None) -> int:
    """``main`` of a command-building launcher: parse, validate and build, then exec or print.

    A config or launch error prints ``error: ...`` and returns 2 before anything starts.
    """
    args = parser.parse_args(argv)
    try:
        cmd = build_command(args)
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return exec_or_print(cmd, args.dry_run, gpus=args.gpus)
