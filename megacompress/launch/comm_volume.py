"""Communication volume per optimizer step for DP / ZeRO stages and tensor parallelism.

    python -m megacompress.launch.comm_volume           # paper sizes, 8..512 GPUs, batch 4096
    python -m megacompress.launch.comm_volume --models baseline-12 --gpus 64 --global-batch 512 --tp 1 2

(``python -m launchers.comm_volume`` and ``python launchers/comm_volume.py`` are the same command.)

Bytes each GPU sends (= receives) per optimizer step with ring collectives: all-reduce
2(n-1)/n x size, reduce-scatter and all-gather (n-1)/n x size each. Psi = parameter count
(a TP rank holds Psi/t), A = accumulation steps = global batch / (micro batch x DP).

What DeepSpeed 0.19 does (checked by measurement: benchmarks/scaling.py counts the bytes
of every collective; docs/scaling.md has the table):

* ZeRO-0 (plain DP): one gradient all-reduce at the accumulation boundary: 2 Psi.
* ZeRO-1: the gradients are all-reduced at the boundary (stage 1 does not partition them),
  then the updated parameters all-gathered: 3 Psi (not the textbook 2 Psi of a reduce-scatter).
* ZeRO-2: DeepSpeed all-reduces the gradient buckets after every micro batch (each rank
  keeps its partition), then all-gathers parameters once: (2A + 1) Psi.
* ZeRO-3: parameters all-gathered once per micro batch and kept for the backward (they are
  within ``stage3_max_reuse_distance``, 1e9 parameters by default), gradients
  reduce-scattered every micro batch: 2A Psi; 3A Psi for models beyond that distance,
  whose backward gathers them again.
* TP (this codebase's layout): per layer, 2 forward all-reduces (attention output and MLP
  down projection, row-parallel) and 3 backward ones (the column-parallel qkv, gate and up
  projections each copy their input), plus the vocab-parallel embedding (forward) and LM
  head input (backward): 5 L + 2 all-reduces of micro x seq x hidden values, and 3 of micro
  x seq values for the vocab-parallel cross-entropy, every micro batch, over the t ranks.

Gradients, gathered parameters and activations are counted at ``--bytes`` per value (2:
bf16). docs/scaling.md puts these numbers next to measured ones and explains how to size a job.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from megacompress import cli
from megacompress.launch.common import LaunchError
from megacompress.models.config import ModelConfig
from megacompress.models.flops import count_parameters, flops_per_token

# GPTHF-E-B has E + B layers of the baseline block (docs/gpthf.md, "The model"): same parameters as a GPT of
# E + B layers; only the masks differ.
MODELS = {"baseline-12": ("baseline-12", 12), "gpthf-8-4": ("baseline-12", 12),
          "baseline-24": ("baseline-24", 24), "gpthf-16-8": ("baseline-24", 24)}


@dataclass(frozen=True)
class Layout:
    gpus: int
    tp: int
    zero: int
    global_batch: int
    micro_batch: int
    seq_len: int

    @property
    def dp(self) -> int:
        return self.gpus // self.tp

    @property
    def accumulation(self) -> int:
        return self.global_batch // (self.micro_batch * self.dp)


def ring(n: int) -> float:
    """Fraction of a buffer one rank sends in a ring reduce-scatter or all-gather."""
    return (n - 1) / n if n > 1 else 0.0


# Effective bandwidths per GPU (GB/s) for the time columns: DP/ZeRO collectives across nodes (~200 Gb/s
# InfiniBand) and TP all-reduces inside a node (NVLink). The job planner uses the same defaults.
DP_BANDWIDTH_GBS = 25.0
TP_BANDWIDTH_GBS = 200.0

# DeepSpeed's default stage3_max_reuse_distance: gathered parameters are kept for the backward within it.
ZERO3_REUSE_DISTANCE = 1e9


def dp_bytes(params: int, layout: Layout, value_bytes: int) -> float:
    """Bytes per GPU per optimizer step for the data-parallel / ZeRO collectives."""
    shard = params / layout.tp * value_bytes * ring(layout.dp)
    a = layout.accumulation
    zero3 = (2 if params / layout.tp <= ZERO3_REUSE_DISTANCE else 3) * a
    return {0: 2 * shard, 1: 3 * shard, 2: (2 * a + 1) * shard, 3: zero3 * shard}[layout.zero]


def tp_bytes(config: ModelConfig, layout: Layout, value_bytes: int) -> float:
    """Bytes per GPU per optimizer step for the tensor-parallel activation all-reduces."""
    tokens = layout.micro_batch * layout.seq_len
    all_reduce = 2 * ring(layout.tp) * value_bytes
    per_micro = (5 * config.num_layers + 2) * tokens * config.hidden_size * all_reduce + 3 * tokens * all_reduce
    return per_micro * layout.accumulation


def rows(models: list[str], gpus: list[int], tps: list[int], zeros: list[int], global_batch: int,
         micro_batch: int, seq_len: int, value_bytes: int, bandwidth: float, tp_bandwidth: float,
         tflops: float):
    """One dict per (model, gpus, tp, zero) layout that divides evenly."""
    for name in models:
        preset, _ = MODELS[name]
        config = ModelConfig.from_preset(preset, max_seq_len=seq_len)
        params = count_parameters(config).total
        step_flops = flops_per_token(config, seq_len) * global_batch * seq_len
        for n in gpus:
            for tp in tps:
                for zero in zeros:
                    layout = Layout(n, tp, zero, global_batch, micro_batch, seq_len)
                    if n % tp or global_batch % (micro_batch * layout.dp) or layout.accumulation < 1:
                        continue
                    dp_comm = dp_bytes(params, layout, value_bytes)
                    tp_comm = tp_bytes(config, layout, value_bytes)
                    yield {"model": name, "params_m": params / 1e6, "gpus": n, "tp": tp, "dp": layout.dp,
                           "zero": zero, "accum": layout.accumulation, "dp_gb": dp_comm / 1e9,
                           "tp_gb": tp_comm / 1e9,
                           "comm_s": dp_comm / (bandwidth * 1e9) + tp_comm / (tp_bandwidth * 1e9),
                           "compute_s": step_flops / (n * tflops * 1e12)}


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("megacompress.launch.comm_volume", __doc__, script="launchers/comm_volume.py")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help="model sizes to tabulate (GPTHF-E-B counts as the baseline of E + B layers)")
    parser.add_argument("--gpus", nargs="+", type=int, default=[8, 64, 512], help="total GPU counts to tabulate")
    parser.add_argument("--tp", nargs="+", type=int, default=[1, 2], help="tensor-parallel sizes to tabulate")
    parser.add_argument("--zero", nargs="+", type=int, default=[0, 1, 2, 3], choices=[0, 1, 2, 3],
                        help="ZeRO stages to tabulate (0: plain data parallelism)")
    parser.add_argument("--global-batch", type=int, default=4096, help="sequences per optimizer step")
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per GPU per micro batch")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--bytes", type=int, default=2, help="bytes per communicated value (bf16: 2)")
    parser.add_argument("--bandwidth", type=float, default=DP_BANDWIDTH_GBS,
                        help="effective GB/s per GPU for DP/ZeRO collectives across nodes (25 ~ 200 Gb/s IB)")
    parser.add_argument("--tp-bandwidth", type=float, default=TP_BANDWIDTH_GBS,
                        help="effective GB/s per GPU for TP all-reduces inside a node (NVLink)")
    parser.add_argument("--tflops", type=float, default=400.0,
                        help="achieved TFLOP/s per GPU for the compute-time column (e.g. 40%% of an H100's bf16 peak)")
    args = parser.parse_args(argv)
    table = list(rows(args.models, args.gpus, args.tp, args.zero, args.global_batch, args.micro_batch,
                      args.seq_len, args.bytes, args.bandwidth, args.tp_bandwidth, args.tflops))
    if not table:  # an empty table would read as "nothing to communicate"
        raise LaunchError(f"no layout fits: --global-batch {args.global_batch} must be a multiple of --micro-batch "
                          f"{args.micro_batch} x DP (= GPUs / TP) for some --gpus / --tp")
    header = (f"{'model':<12}{'params':>8}{'GPUs':>6}{'TP':>4}{'DP':>5}{'ZeRO':>5}{'accum':>6}"
              f"{'DP GB':>9}{'TP GB':>9}{'comm s':>9}{'compute s':>11}")
    print(f"per GPU per optimizer step; global batch {args.global_batch} x {args.seq_len} tokens, micro batch "
          f"{args.micro_batch}, {args.bytes} B/value, DP {args.bandwidth:g} GB/s, TP {args.tp_bandwidth:g} GB/s, "
          f"{args.tflops:g} TFLOP/s")
    print(header)
    print("-" * len(header))
    for r in table:
        print(f"{r['model']:<12}{r['params_m']:>7.0f}M{r['gpus']:>6}{r['tp']:>4}{r['dp']:>5}{r['zero']:>5}"
              f"{r['accum']:>6}{r['dp_gb']:>9.2f}{r['tp_gb']:>9.2f}{r['comm_s']:>9.3f}{r['compute_s']:>11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
