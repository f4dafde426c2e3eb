r"""Submit ``megacompress.train`` to SLURM through submitit (one task per GPU / CPU rank).

    megacompress launch slurm --config configs/tiny_gpt.yaml --nodes 2 --gpus-per-node 8 \
        --partition gpu --time 24:00:00 --run-dir runs/tiny
    megacompress launch slurm --config configs/tiny_gpt.yaml --gpus-per-node 0 \
        --tasks-per-node 2 --partition debug --time 00:10:00 --array sweep.yaml

The config (and every sweep entry) is loaded and validated here first, so an invalid one
fails at submission with the trainer's message. Each job runs ``megacompress.launch.slurm_job.TrainJob``
(checkpointable: SIGUSR2 before the time limit -> checkpoint -> requeue -> resume from
``latest``). submitit's pickles and per-task logs go to RUN_DIR/slurm/, the trainer's
checkpoints and metrics to RUN_DIR (array task i: RUN_DIR/task_i/). Across nodes the ranks
meet at the first node's address as SLURM has it (``scontrol show node``: names need not
resolve); a failed rank ends the job's others, and a dead node fails the job (resubmit to
resume from the last checkpoint). Every shard the config reads must exist before anything
is submitted. ``python launchers/slurm.py`` is the same command. See docs/launching.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import submitit

from megacompress import cli
from megacompress.launch.common import (
    REPO_ROOT, TRAIN_MODULE, LaunchError, add_train_arguments, cpu_environment, command_from_args, load_sweep,
    run_dir_override, validate)
from megacompress.launch.slurm_job import FIRST_NODE_ADDR_ENV, TrainJob

# sbatch script line (runs once, on the first node): the first node's address as SLURM has
# it (NodeAddr), the rendezvous address of every task; node names need not resolve.
FIRST_NODE_ADDR_SETUP = (
    f"export {FIRST_NODE_ADDR_ENV}="
    """$(scontrol show node -o "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)" """
    """| tr ' ' '\\n' | sed -n 's/^NodeAddr=//p')""")


def parse_time(text: str) -> int:
    """SLURM ``--time`` -> whole minutes (rounded up), in sbatch's formats: ``MM``, ``MM:SS``,
    ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS`` (two fields mean MM:SS without a day)."""
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    try:
        numbers = [int(p) for p in parts]
        day_count = int(days) if days else 0
    except ValueError:
        raise LaunchError(f"--time {text!r}: expected [D-]HH:MM:SS") from None
    if len(numbers) == 3:
        hours, minutes, seconds = numbers
    elif len(numbers) == 2:
        hours, minutes, seconds = (numbers[0], numbers[1], 0) if days else (0, numbers[0], numbers[1])
    elif len(numbers) == 1:
        hours, minutes, seconds = (numbers[0], 0, 0) if days else (0, numbers[0], 0)
    else:
        raise LaunchError(f"--time {text!r}: expected [D-]HH:MM:SS")
    total = day_count * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    if total <= 0:
        raise LaunchError(f"--time {text!r} must be positive")
    return total


def add_queue_arguments(group) -> None:
    """Where and how long a job may run: shared by every SLURM entry point."""
    group.add_argument("--mem-gb", type=int, default=None, help="memory per node in GB (default: SLURM's)")
    group.add_argument("--partition", required=True, help="SLURM partition")
    group.add_argument("--time", required=True, help="time limit [D-]HH:MM:SS (rounded up to minutes)")
    group.add_argument("--account", default=None, help="SLURM account to charge")
    group.add_argument("--qos", default=None, help="SLURM quality of service")


def queue_parameters(args: argparse.Namespace) -> dict:
    """submitit parameters of `add_queue_arguments`' options."""
    params = {"timeout_min": parse_time(args.time), "slurm_partition": args.partition}
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    if args.account:
        params["slurm_account"] = args.account
    if args.qos:
        params["slurm_qos"] = args.qos
    return params


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("megacompress.launch.slurm", __doc__, script="launchers/slurm.py")
    add_train_arguments(parser)
    res = parser.add_argument_group("resources")
    res.add_argument("--nodes", type=int, default=1, help="number of nodes (default: 1)")
    res.add_argument("--gpus-per-node", type=int, default=0,
                     help="GPUs per node; one task per GPU. 0: CPU nodes (gloo, DS_ACCELERATOR=cpu)")
    res.add_argument("--tasks-per-node", type=int, default=None,
                     help="ranks per node (default: --gpus-per-node, or 1 on CPU nodes)")
    res.add_argument("--cpus-per-task", type=int, default=None,
                     help="CPU cores per rank (default: SLURM's); sets OMP_NUM_THREADS on CPU nodes")
    add_queue_arguments(res)
    job = parser.add_argument_group("job")
    job.add_argument("--run-dir", default=None,
                     help="checkpoints/metrics dir (default: runs/<config name>); logs in RUN_DIR/slurm")
    job.add_argument("--array", default=None, metavar="SWEEP_YAML",
                     help="YAML list of override mappings; submits one array task per entry")
    job.add_argument("--array-parallelism", type=int, default=64, help="max array tasks running at once (default: 64)")
    job.add_argument("--job-name", default=None, help="default: megacompress-<config name>")
    job.add_argument("--max-requeues", type=int, default=3,
                     help="how many times a job that reaches its time limit is requeued (default: 3)")
    job.add_argument("--signal-delay-s", type=int, default=120,
                     help="SIGUSR2 this many seconds before the time limit, to save a checkpoint (default: 120)")
    job.add_argument("--module", default=TRAIN_MODULE,
                     help="entry-point module whose main(argv) each task calls with --config/--set")
    job.add_argument("--wait", action="store_true", help="wait for the job(s) and print each task's result")
    return parser


def tasks_per_node(args: argparse.Namespace) -> int:
    return args.tasks_per_node or (args.gpus_per_node if args.gpus_per_node > 0 else 1)


def make_executor(args: argparse.Namespace, run_dir: Path) -> submitit.AutoExecutor:
    tasks = tasks_per_node(args)
    # submitit counts requeues after time limits (preemptions are requeued without limit).
    executor = submitit.AutoExecutor(folder=run_dir / "slurm" / "%j", cluster="slurm",
                                     slurm_max_num_timeout=args.max_requeues)
    params = dict(
        nodes=args.nodes, tasks_per_node=tasks, name=args.job_name or f"megacompress-{Path(args.config).stem}",
        slurm_signal_delay_s=args.signal_delay_s,
        slurm_array_parallelism=args.array_parallelism,
        # Lines of the sbatch script, run before any task starts python: the job must import
        # `megacompress` (TrainJob is pickled by reference: megacompress.launch.slurm_job) from
        # this checkout; CPU ranks need their env before torch is imported.
        slurm_setup=[f"export PYTHONPATH={REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}", FIRST_NODE_ADDR_SETUP,
                     *(f"export {k}={v}" for k, v in job_env(args).items())],
        # A rank that fails ends the job's other ranks, instead of leaving them blocked in a
        # collective until the time limit.
        slurm_srun_args=["--kill-on-bad-exit=1"],
        # A node that fails fails the job (its batch script ends with srun's error) rather
        # than requeueing it onto nodes that may not exist; resubmitting resumes from `latest`.
        slurm_additional_parameters={"no-kill": True},
    )
    if args.gpus_per_node > 0:
        params["gpus_per_node"] = args.gpus_per_node
    if args.cpus_per_task:
        params["cpus_per_task"] = args.cpus_per_task
    executor.update_parameters(**params, **queue_parameters(args))
    return executor


def job_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment every task needs: none on GPU nodes; DeepSpeed's CPU accelerator and
    one OpenMP thread per allocated core on CPU nodes."""
    if args.gpus_per_node > 0:
        return {}
    return cpu_environment(args.cpus_per_task or 1)


def submit(args: argparse.Namespace) -> list[submitit.Job]:
    """Validate every config, then submit one job (or one array task per sweep entry)."""
    base = command_from_args(args)
    run_dir = Path(args.run_dir or REPO_ROOT / "runs" / Path(args.config).stem).resolve()
    if args.array:
        commands = [base.with_overrides([*extra, run_dir_override(run_dir / f"task_{i}")])
                    for i, extra in enumerate(load_sweep(args.array))]
    else:
        commands = [base.with_overrides([run_dir_override(run_dir)])]
    world_size = args.nodes * tasks_per_node(args)
    # Fail here, on the login node, not after waiting in the queue.
    configs = [validate(c, world_size, on_gpu=args.gpus_per_node > 0) for c in commands]
    executor = make_executor(args, run_dir)
    jobs_in = [TrainJob(c, str(cfg.run_dir), str(cfg.checkpoint_dir), gpus=args.gpus_per_node > 0, module=args.module)
               for c, cfg in zip(commands, configs)]
    if args.array:
        with executor.batch():
            jobs = [executor.submit(job) for job in jobs_in]
    else:
        jobs = [executor.submit(jobs_in[0])]
    for job, command, cfg in zip(jobs, commands, configs):
        print(f"submitted job {job.job_id}: {args.module} {' '.join(command.argv())}")
        print(f"  logs:        {job.paths.folder}/{job.job_id}_<task>_log.{{out,err}}")
        print(f"  metrics:     {cfg.run_dir}/metrics.jsonl")
        print(f"  checkpoints: {cfg.checkpoint_dir}")
    return jobs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    jobs = submit(args)
    if not args.wait:
        return 0
    failed = 0
    for job in jobs:
        try:
            for task, result in enumerate(job.results()):
                print(f"job {job.job_id} task {task}: {result}")
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as err:
            print(f"job {job.job_id} failed: {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
