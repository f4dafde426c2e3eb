"""Start ``megacompress.train`` on many processes: torchrun, the deepspeed launcher, or SLURM.

    megacompress launch torchrun --nproc-per-node 2 --config configs/tiny_gpt.yaml
    megacompress launch deepspeed --hostfile hostfile --config configs/baseline12.yaml
    megacompress launch slurm --config configs/baseline12.yaml --nodes 2 --gpus-per-node 8 \\
        --partition gpu --time 24:00:00
    megacompress launch plan --config configs/baseline12.yaml --nodes 4 --gpus-per-node 8 --gpu h100-80gb

Every launcher validates the config for the full world size before anything starts or is
submitted; ``plan`` sizes the job (memory per GPU, traffic, tokens/s) without starting
anything. The older command lines (``python launchers/torchrun.py ...``) run the same code.
See docs/launching.md.
"""

from __future__ import annotations

from megacompress.command import Subcommand, run_subcommand

SUBCOMMANDS = {c.name: c for c in (
    Subcommand("torchrun", "Run training under torchrun on this node (several nodes: run it on each, with its "
                           "--node-rank).", "megacompress.launch.torchrun:main"),
    Subcommand("deepspeed", "Run training under the deepspeed launcher on the hosts of an MPI-style hostfile.",
               "megacompress.launch.deepspeed_launch:main"),
    Subcommand("slurm", "Submit training to SLURM through submitit (one task per rank; sweeps as job arrays; "
                        "requeued after preemption).", "megacompress.launch.slurm:main"),
    Subcommand("plan", "Size a job without starting it: memory per GPU, whether it fits, traffic per step, "
                       "tokens/s.", "megacompress.launch.plan:main"),
)}


def main(argv: list[str] | None = None) -> int:
    """``megacompress launch LAUNCHER [flags]``: run that launcher's ``main(flags)``."""
    return run_subcommand("megacompress launch", SUBCOMMANDS, argv, __doc__.split("\n\n")[0])
