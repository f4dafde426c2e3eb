"""Pieces every launcher shares: the training command, config validation, sweeps.

A launcher never trains by itself: it starts ``python -m megacompress.train --config CFG
--set k=v ...`` (or, under SLURM, calls the same entry point in-process on every task).
Configs are validated here, before anything is submitted or spawned, so a bad key or
value fails on the login node with the trainer's own validation message.

Every way a launch ends says why: a launch error is one ``error: ...`` line (exit 2); a
trainer that stopped with a user error or after a signal ends the launch with its own
message and exit status (2, or 75 with "checkpoint saved ..."), without torchrun's failure
report around it; a crash keeps torchrun's report and traceback.
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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import yaml

from megacompress.errors import UserError

# The checkout this package runs from (megacompress/launch/common.py -> ../..): default run dirs
# go under REPO_ROOT/runs, and SLURM jobs import the package from here.
REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_MODULE = "megacompress.train"


class LaunchError(UserError, RuntimeError):
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


def validate(command: TrainCommand, world_size: int | None = None, *, on_gpu: bool = False,
             check_data: bool = True):
    """Load and validate the config exactly as the trainer will; returns the ``TrainConfig``.

    With ``world_size`` the checks that depend on it run too (tensor-parallel size divides
    the world; global batch = micro batch x DP size x accumulation steps; the DeepSpeed
    template exists). ``check_data``: the data paths exist here (not for a job only planned).
    Raises LaunchError with the trainer's message, so that nothing invalid reaches a cluster.
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
        if check_data:
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
    """Call ``module.main(argv)`` in this process and return its exit status: what
    ``sys.exit(main(argv))`` would exit with.

    ``SystemExit`` and the returned value follow Python's rules: ``None`` or 0 is success,
    an integer is the status, and anything else (``sys.exit("message")``, or any other
    object) is printed to stderr with status 1 -- never taken for success, and never
    silent (an empty message is replaced by one naming the module). The one exception: a
    returned result that is not a status (preprocessing returns its summary) is success.
    """
    entry = importlib.import_module(module)
    try:
        status = entry.main(argv)
    except SystemExit as exit_:
        return _exit_status(module, exit_.code)
    if status is None or isinstance(status, (int, str)):
        return _exit_status(module, status)
    return 0


def _exit_status(module: str, code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):  # bool included: sys.exit(True) is status 1; callers name a failed status
        return int(code)
    text = str(code)
    print(text if text.strip() else f"{module} exited with SystemExit({code!r}): status 1", file=sys.stderr,
          flush=True)
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


def run_launcher(cmd: list[str], run_dir: Path, *, torchrun: bool = False) -> int:
    """Run ``cmd`` (torchrun / deepspeed) as a child and return its exit status, or
    `EXIT_REQUEUE` (75) when the trainer recorded a signal-triggered checkpoint in
    ``RUN_DIR/exit_status.json`` during this run (torchrun itself exits 1 then).

    SIGTERM and SIGUSR2 sent to this process go to the ranks themselves: the trainer
    checkpoints and stops, and torchrun is not torn down by a signal of its own (SIGUSR2
    would kill it). Ctrl-C reaches every process of the terminal's group without us.

    With ``torchrun``, torchrun's stderr (the ranks' too) goes through an
    `elastic_report.ReportFilter`: when the ranks stopped on purpose -- a user error (the
    trainer printed its ``error: ...`` line, exit 2) or a checkpoint after a signal (75) --
    torchrun's ``ChildFailedError`` report is dropped and the ranks' status returned; any
    other failure keeps it. A launch that ends in failure always says why on stderr.
    """
    from megacompress.training.signals import EXIT_REQUEUE

    started = time.time()
    report = _FilteredStderr() if torchrun else None
    child = subprocess.Popen(cmd, stderr=report.child_stderr if report else None)
    if report:
        report.start_reading()

    def forward(signum, _frame):
        for pid in rank_processes(child.pid) or [child.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(sig, forward)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    status = child.wait()
    quiet = None
    if report:
        report.finish_reading()
        quiet = report.filter.quiet_exit() if status else None
        if quiet is not None:
            report.filter.drop_report()
        else:
            report.filter.release()
    try:
        record = json.loads((run_dir / "exit_status.json").read_text())
    except (OSError, ValueError):
        record = {}
    if record.get("reason") == "signal" and record.get("time", 0) >= started:
        print(f"{record.get('signal')}: checkpoint saved at step {record.get('step')} ({record.get('checkpoint')}); "
              f"rerun the same command to resume (exit status {EXIT_REQUEUE})", file=sys.stderr, flush=True)
        return EXIT_REQUEUE
    if quiet is not None:
        if quiet.exitcode == EXIT_REQUEUE:  # exit_status.json is rank 0's (on another node's disk, maybe)
            print(f"rank {quiet.rank} stopped with exit status {EXIT_REQUEUE}: checkpointed after a signal; rerun the "
                  f"same command to resume", file=sys.stderr, flush=True)
        elif not report.filter.error_lines:  # only rank 0 prints a user error's message
            print(f"error: rank {quiet.rank} stopped with exit status {quiet.exitcode} (a user error) without a "
                  f"message here (only rank 0 prints user errors); rerun with MEGACOMPRESS_DEBUG=1 to see every "
                  f"rank's traceback", file=sys.stderr, flush=True)
        return quiet.exitcode
    return _launcher_status(cmd, status)


def _launcher_status(cmd: list[str], status: int) -> int:
    """The child's status as this process's exit status: a signal that killed it is named
    (and becomes 128 + its number, as a shell reports it)."""
    if status >= 0:
        return status
    name = signal.Signals(-status).name if -status in signal.valid_signals() else f"signal {-status}"
    launcher = " ".join([Path(cmd[0]).name, *cmd[1:3]])
    print(f"error: {launcher} was killed by {name}", file=sys.stderr, flush=True)
    return 128 - status


class _FilteredStderr:
    """torchrun's stderr through a `ReportFilter`: a pseudo-terminal when ours is a terminal
    (the ranks keep their progress bars), else a pipe; read by a thread."""

    def __init__(self):
        from megacompress.launch.elastic_report import ReportFilter

        self.filter = ReportFilter()
        self._thread = None
        self._read_fd, self.child_stderr = _terminal_pair() if _is_terminal(sys.stderr) else os.pipe()

    def start_reading(self) -> None:
        os.close(self.child_stderr)  # the child holds it now; EOF comes when the last rank closes it
        self._thread = threading.Thread(target=self._read, name="torchrun-stderr", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                try:
                    chunk = os.read(self._read_fd, 65536)
                except OSError:  # a pseudo-terminal's end: EIO once every writer has closed it
                    break
                if not chunk:
                    break
                self.filter.feed(chunk)
        finally:
            self.filter.close()

    def finish_reading(self) -> None:
        """Wait for the rest of the output (a rank that outlives torchrun may keep it open:
        not forever)."""
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            os.close(self._read_fd)


def _is_terminal(stream) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def _terminal_pair() -> tuple[int, int]:
    """A pseudo-terminal (master, slave) with our terminal's size and no CR added before LF."""
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.ONLCR
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(sys.stderr.fileno(), termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
    return master, slave


def print_or_run(launch: Launch, dry_run: bool, *, gpus: bool, torchrun: bool = False) -> int:
    """Print the command; unless ``dry_run``, run it (`run_launcher`) with the CPU environment."""
    print(" ".join(shlex.quote(c) for c in launch.cmd), flush=True)
    if dry_run:
        return 0
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if not gpus:
        for key, value in cpu_environment().items():
            os.environ.setdefault(key, value)
    return run_launcher(launch.cmd, launch.run_dir, torchrun=torchrun)


def launch_main(parser: argparse.ArgumentParser, build_command, argv: list[str] | None = None, *,
                torchrun: bool = False) -> int:
    """``main`` of a command-building launcher: parse, validate and build (a `Launch`), then print and run.

    A config or launch error (a missing shard included) is a `LaunchError` before anything
    starts (``cli.run``: one ``error: ...`` line, exit 2). ``torchrun``: the command is
    torchrun's (see `run_launcher`).
    """
    args = parser.parse_args(argv)
    launch = build_command(args)
    return print_or_run(launch, args.dry_run, gpus=args.gpus, torchrun=torchrun)
