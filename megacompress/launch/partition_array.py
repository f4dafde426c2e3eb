r"""A partitioned tool on SLURM: one job-array task per partition, then the merge.

A tool whose CLI takes ``--input``, ``--output-prefix``, ``--partitions N``,
``--partition-index I`` (do partition I alone) and ``--merge`` (join the committed
partitions) runs on a cluster through a small launcher script that names it (a
`PartitionedTool`), as ``tools/preprocess_slurm.py`` does for packing::

    python tools/preprocess_slurm.py --partitions 8 --partition debug --time 01:00:00 \
        --input 'corpus/*.jsonl' --output-prefix data/train --append-eod --wait
    # rerun only the partitions that failed (and the merge):
    python tools/preprocess_slurm.py --partitions 8 --partition-index 3 5 ... (same flags)

Every flag that is not the launcher's own is a flag of the tool; they are checked here (and
the inputs must exist) before anything is submitted. Array task j runs ``python -m MODULE
FLAGS --partitions N --partition-index I``; one more job, submitted with
``--dependency=afterok`` on the array, runs the same FLAGS with ``--merge``. The output is
byte-identical to a one-process run. A partition that fails cancels the merge
(``--kill-on-invalid-dep``); the finished partitions stay, so rerunning with
``--partition-index`` of the failed ones does those alone and merges. Logs: ``--log-dir``
(default: the output prefix's directory + ``/slurm``), one folder per job.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import submitit

from megacompress.launch.common import REPO_ROOT, LaunchError
from megacompress.launch.slurm import add_queue_arguments, queue_parameters
from megacompress.launch.slurm_job import EntryPointJob


@dataclass(frozen=True)
class PartitionedTool:
    """``module``: the tool run by every job; ``build_parser``: its argument parser (flags are
    checked with it before submission); ``script``: the launcher users run; ``job_name``: the
    default SLURM job name."""

    module: str
    build_parser: Callable[[], argparse.ArgumentParser]
    script: str
    job_name: str
    description: str


def build_parser(tool: PartitionedTool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python {tool.script}", description=tool.description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = parser.add_argument_group("partitions")
    parts.add_argument("--partitions", type=int, required=True, help="number of partitions = array tasks (N > 1)")
    parts.add_argument("--partition-index", type=int, nargs="+", default=None, metavar="I",
                       help="submit only these partitions (e.g. the failed ones), then the merge")
    res = parser.add_argument_group("resources (per array task)")
    res.add_argument("--cpus-per-task", type=int, default=1,
                     help="cores per task (default: 1; give --workers the same number)")
    add_queue_arguments(res)
    res.add_argument("--array-parallelism", type=int, default=64, help="max array tasks running at once (default: 64)")
    job = parser.add_argument_group("job")
    job.add_argument("--job-name", default=tool.job_name)
    job.add_argument("--log-dir", default=None, help="submitit folders (default: OUTPUT_PREFIX's dir/slurm)")
    job.add_argument("--wait", action="store_true", help="wait for the partitions and the merge; on a failure "
                                                         "print the command that reruns the failed partitions")
    return parser


def check_flags(tool: PartitionedTool, tool_argv: list[str], partitions: int, indices: list[int]) -> argparse.Namespace:
    """Parse the tool's flags as every task will, and check the inputs exist."""
    from megacompress.data import readers

    if partitions < 2:
        raise LaunchError(f"--partitions {partitions}: give N > 1 (one partition needs no array)")
    bad = [i for i in indices if not 0 <= i < partitions]
    if bad:
        raise LaunchError(f"--partition-index {bad}: not in [0, --partitions {partitions})")
    if any(flag in tool_argv for flag in ("--partition-index", "--merge")):
        raise LaunchError("--merge is the job this script submits after the partitions: leave it out")
    try:
        args = tool.build_parser().parse_args(tool_argv)
    except SystemExit:  # argparse printed the message
        raise LaunchError(f"invalid {tool.module} flags: {shlex.join(tool_argv)}") from None
    try:
        readers.expand_inputs(args.input)
    except readers.InputError as err:
        raise LaunchError(str(err)) from err
    return args


def executor(args: argparse.Namespace, folder: Path, **extra) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    ex.update_parameters(nodes=1, tasks_per_node=1, cpus_per_task=args.cpus_per_task, name=args.job_name,
                         slurm_array_parallelism=args.array_parallelism,
                         slurm_setup=[f"export PYTHONPATH={REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"],
                         **queue_parameters(args), **extra)
    return ex


def submit(tool: PartitionedTool, args: argparse.Namespace, tool_argv: list[str]):
    """Submit the partitions' array and the merge after it; returns (partition jobs, merge job)."""
    indices = args.partition_index or list(range(args.partitions))
    flags = check_flags(tool, tool_argv, args.partitions, indices)
    folder = Path(args.log_dir or Path(flags.output_prefix).resolve().parent / "slurm").resolve()
    common = [*tool_argv, "--partitions", str(args.partitions)]
    with (array := executor(args, folder)).batch():
        jobs = [array.submit(EntryPointJob(tool.module, [*common, "--partition-index", str(i)])) for i in indices]
    array_id = jobs[0].job_id.split("_")[0]
    merge = executor(args, folder, slurm_additional_parameters={
        "dependency": f"afterok:{array_id}", "kill-on-invalid-dep": "yes"}).submit(
        EntryPointJob(tool.module, [*common, "--merge"]))
    print(f"submitted partitions {indices} of {args.partitions}: job array {array_id} (task j does the j-th "
          f"of them), logs in {folder}", flush=True)
    print(f"submitted merge: job {merge.job_id} (after the array) -> {flags.output_prefix}_*_document", flush=True)
    return dict(zip(indices, jobs)), merge


def wait(tool: PartitionedTool, partition_jobs: dict, merge, argv: list[str]) -> int:
    failed = []
    for index, job in partition_jobs.items():
        try:
            job.result()
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as err:
            print(f"partition {index} (job {job.job_id}, {job.state}) failed: {str(err).splitlines()[0]}",
                  file=sys.stderr)
            failed.append(index)
    if failed:
        merge.cancel(check=False)  # cancelled by SLURM too (--kill-on-invalid-dep); this is quicker
        rerun = rerun_argv(argv, failed)
        print(f"the finished partitions are kept; rerun the failed ones and the merge with:\n"
              f"  {shlex.join([sys.executable, tool.script, *rerun])}", file=sys.stderr)
        return 1
    try:
        merge.result()
    except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as err:
        print(f"merge (job {merge.job_id}, {merge.state}) failed: {err}", file=sys.stderr)
        return 1
    print(f"merged {len(partition_jobs)} partition(s): job {merge.job_id} done")
    return 0


def rerun_argv(argv: list[str], failed: list[int]) -> list[str]:
    """``argv`` with ``--partition-index`` replaced by the failed partitions."""
    out, skipping = [], False
    for item in argv:
        if item == "--partition-index":
            skipping = True
        elif skipping and item.isdigit():
            continue
        else:
            skipping = False
            out.append(item)
    return [*out, "--partition-index", *map(str, failed)]


def main(tool: PartitionedTool, argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, tool_argv = build_parser(tool).parse_known_args(argv)
    partition_jobs, merge = submit(tool, args, tool_argv)
    return wait(tool, partition_jobs, merge, argv) if args.wait else 0
