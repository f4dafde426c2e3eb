"""``python -m megacompress.train``: train a model (any registered architecture) with DeepSpeed ZeRO from a YAML config.

Run it under a launcher that sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT
(torchrun, the deepspeed launcher, SLURM via launchers/), or plainly for one process::

    torchrun --nproc-per-node 2 -m megacompress.train --config configs/tiny_gpt.yaml \\
        --set schedule.train_steps=200 --set optimizer.lr=3e-4

Exit status: 0 when training finished (or stopped at ``--stop-at-step``), `EXIT_REQUEUE`
(75) after SIGTERM/SIGUSR2 made it save a checkpoint and stop (resuming is automatic:
``checkpoint.resume`` loads ``CHECKPOINT_DIR/latest``), 2 for a user error (bad config,
missing data, a checkpoint that does not fit), printed as one ``error: ...`` line.
"""

from __future__ import annotations

import argparse
import sys

from megacompress import cli
from megacompress.training.config import load_config
from megacompress.training.signals import EXIT_REQUEUE, StopSignal


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.parser("megacompress.train", __doc__.split("Exit status")[0], epilog=(
        f"Exit codes: 0 finished / stopped; {EXIT_REQUEUE} checkpointed after SIGTERM or SIGUSR2 "
        "(requeue and rerun the same command to resume); 2 a user error. See docs/training.md."))
    parser.add_argument("--config", help="YAML training config (e.g. configs/tiny_gpt.yaml); "
                                         "defaults are used for missing keys")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set optimizer.lr=3e-4 (repeatable)")
    parser.add_argument("--stop-at-step", type=int, default=0, metavar="K",
                        help="save a checkpoint and exit 0 once K optimizer steps are done "
                             "(the schedule still spans schedule.train_steps)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    # First, before DeepSpeed's import, process groups and data: a SIGTERM during start-up then
    # still ends in a checkpoint and exit 75 (the default action would exit 143 with no status).
    stop = StopSignal()
    try:
        return _train(argv, stop)
    finally:
        stop.restore()  # main() also runs in-process (SLURM tasks, tests): leave the handlers as found


def _train(argv: list[str] | None, stop: StopSignal) -> int:
    args = parse_args(argv)
    config = load_config(args.config, args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return 0
    from megacompress.parallel import state
    from megacompress.training.trainer import Trainer  # heavy imports (DeepSpeed) only when training

    result = Trainer(config, stop_at_step=args.stop_at_step, stop=stop).train()
    # Left to interpreter exit, gloo's worker threads can abort the process (SIGABRT, "terminate
    # called without an active exception") after a successful run. Only after a clean finish: tearing
    # down while another rank is still inside a collective can hang it.
    state.destroy()
    return EXIT_REQUEUE if result.reason == "signal" else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
