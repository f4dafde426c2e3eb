"""Count the bytes each rank sends through torch.distributed collectives while training.

Run as a torchrun worker by benchmarks/scaling.py (never imported by normal runs):

    torchrun --nproc-per-node 2 benchmarks/comm_count.py --out DIR -- --config CFG --set k=v ...

It wraps the collectives of ``torch.distributed`` before DeepSpeed and the model code look
them up, runs ``megacompress.train.main`` with the arguments after ``--``, takes a snapshot
of the counters after every optimizer step (``Trainer._train_step``) and writes
``DIR/rank{R}.json``: ``{"steps": [bytes sent after step 1, after step 2, ...],
"wire_steps": [...], "last_step_calls": {"all_reduce/2/BYTES": calls, ...}}``. ``wire_steps``
is an independent check: the TCP bytes this process's sockets have sent (``ss -tinp``
``bytes_sent``; gloo's traffic, headers included), after each step; ``last_step_calls``
the calls of the last step by collective, group size and input size: where the bytes went.

Bytes a rank *sends* for one call on a group of n ranks, with the bandwidth-optimal (ring)
algorithms that `megacompress.launch.comm_volume` assumes, S = the call's input bytes on this rank:
all-reduce 2(n-1)/n S; reduce-scatter (n-1)/n S; all-gather (n-1) S (its shard to every
other rank); broadcast / reduce (n-1)/n S (the mean over ranks of what must cross the wire);
send S. Groups of one rank send nothing.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d


def _nbytes(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(t) for t in x)
    return 0


# name -> (position and keyword of the argument whose bytes count, bytes sent for (n, S)).
RING = {
    "all_reduce": (0, "tensor", lambda n, s: 2 * (n - 1) / n * s),
    "reduce_scatter": (1, "input_list", lambda n, s: (n - 1) / n * s),
    "reduce_scatter_tensor": (1, "input", lambda n, s: (n - 1) / n * s),
    "_reduce_scatter_base": (1, "input", lambda n, s: (n - 1) / n * s),
    "all_gather": (1, "tensor", lambda n, s: (n - 1) * s),
    "all_gather_into_tensor": (1, "input_tensor", lambda n, s: (n - 1) * s),
    "_all_gather_base": (1, "input_tensor", lambda n, s: (n - 1) * s),
    "broadcast": (0, "tensor", lambda n, s: (n - 1) / n * s),
    "reduce": (0, "tensor", lambda n, s: (n - 1) / n * s),
    "all_to_all_single": (1, "input", lambda n, s: (n - 1) / n * s),
    "send": (0, "tensor", lambda n, s: s),
    "isend": (0, "tensor", lambda n, s: s),
}
SENT: Counter = Counter()  # "name/n" -> bytes sent
CALLS: Counter = Counter()  # "name/n/input bytes" -> calls


def _group_size(kwargs) -> int:
    return dist.get_world_size(kwargs.get("group")) if dist.is_initialized() else 1


def _counting(name: str, fn):
    index, keyword, factor = RING[name]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        n = _group_size(kwargs)
        payload = args[index] if len(args) > index else kwargs.get(keyword)
        if n > 1:
            size = _nbytes(payload)
            SENT[f"{name}/{n}"] += factor(n, size)
            CALLS[f"{name}/{n}/{size}"] += 1
        return fn(*args, **kwargs)

    return wrapper


def wire_bytes(pid: int) -> int:
    """TCP bytes sent so far by the sockets of process ``pid`` (``ss -tinp``; 0 without ``ss``)."""
    try:
        lines = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return 0
    total, ours = 0, False
    for line in lines:
        if not line.startswith((" ", "\t")):  # a socket's first line names its owners
            ours = f"pid={pid}," in line
        elif ours and (match := re.search(r"\bbytes_sent:(\d+)", line)):
            total += int(match.group(1))
    return total


def install() -> None:
    """Wrap every counted collective in ``torch.distributed`` (and its c10d module)."""
    for name in RING:
        if hasattr(c10d, name):
            wrapped = _counting(name, getattr(c10d, name))
            setattr(c10d, name, wrapped)
            setattr(dist, name, wrapped)




def main() -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/comm_count.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    args, train_argv = parser.parse_known_args()
    train_argv = [a for a in train_argv if a != "--"]
    install()
    from megacompress import train
    from megacompress.training import trainer

    steps: list[float] = []
    wire: list[int] = []
    calls: list[Counter] = [Counter()]
    step = trainer.Trainer._train_step

    def counted_step(self, loader):
        result = step(self, loader)
        steps.append(sum(SENT.values()))
        wire.append(wire_bytes(os.getpid()))
        calls.append(CALLS.copy())
        return result

    trainer.Trainer._train_step = counted_step
    status = train.main(train_argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))  # the trainer may have ended the process group
    last = calls[-1] - calls[-2] if len(calls) > 1 else Counter()
    (args.out / f"rank{rank}.json").write_text(json.dumps({"steps": steps, "wire_steps": wire,
                                                                  "last_step_calls": dict(last)}, indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
