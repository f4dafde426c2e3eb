"""Size a training job before it is queued: memory per GPU, whether it fits, traffic, tokens/s.

    megacompress launch plan --config configs/baseline12.yaml --nodes 4 --gpus-per-node 8 --gpu h100-80gb
    python tools/plan_job.py --config configs/gist-llama2-7b.yaml --nodes 1 --gpus-per-node 8 --out plan.json

For the config's ZeRO stage, TP size, sequence parallelism, recompute mode and precision it
prints the bytes per GPU of parameters, gradients, optimizer state, DeepSpeed buffers and the
activations of one micro batch (`megacompress.launch.memory_model`, whose docstring derives
every term from the code), their peak total and whether that fits the GPU (with --headroom
left for the CUDA context, NCCL and fragmentation); the bytes each GPU sends per optimizer
step (`megacompress.launch.comm_volume`); and tokens/s at a stated MFU, from the model FLOPs
per token the trainer's MFU uses (`megacompress.models.flops`). Nothing is started and no
shard is read. ``--gpu cpu`` plans for this machine (fp32, dense attention): that is what
benchmarks/plan_memory.py measures against. docs/scaling.md has the tables for the paper sizes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from megacompress import cli
from megacompress.atomic import write_text_atomic
from megacompress.launch import comm_volume
from megacompress.launch.common import LaunchError, TrainCommand, validate
from megacompress.launch.devices import GIB, Device, device_names, get_device
from megacompress.launch.memory_model import JobShape, ZeroBuffers, estimate, rank_parameters
from megacompress.models.flops import count_parameters, flops_per_token

MEMORY_PARTS = ("parameters", "gradients", "optimizer", "buffers", "activations", "optimizer_step_temporary")


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    device: Device

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class Rates:
    """What the time estimates assume."""

    mfu: float = 0.4
    headroom: float = 0.1
    bandwidth: float = comm_volume.DP_BANDWIDTH_GBS
    tp_bandwidth: float = comm_volume.TP_BANDWIDTH_GBS


def load(config_path: str, overrides: list[str], cluster: Cluster):
    """The training config (checked as the launchers check it, data paths aside: the job is only
    planned here), its model config and its DeepSpeed config for this cluster."""
    from megacompress.training.ds_config import build_ds_config

    config = validate(TrainCommand(config_path, overrides), cluster.world_size, on_gpu=cluster.device.gpu,
                      check_data=False)
    tp = config.parallel.tensor_parallel_size
    model = config.model.build()
    model.validate(tp)
    return config, model, build_ds_config(config, cluster.world_size // tp, on_gpu=cluster.device.gpu)


def plan(config_path: str, cluster: Cluster, rates: Rates = Rates(), overrides: list[str] | None = None) -> dict:
    """The plan as a JSON-ready dict (keys: module docstring and docs/scaling.md)."""
    config, model, ds = load(config_path, overrides or [], cluster)
    par, sched = config.parallel, config.schedule
    tp, world = par.tensor_parallel_size, cluster.world_size
    dp = world // tp
    bf16 = bool(ds["bf16"]["enabled"])
    shape = JobShape(tp=tp, dp=dp, zero=par.zero_stage, micro_batch=sched.micro_batch_size, seq_len=model.max_seq_len,
                     recompute=par.recompute, sequence_parallel=par.sequence_parallel and tp > 1, bf16=bf16,
                     gpu=cluster.device.gpu, accumulation=ds["gradient_accumulation_steps"],
                     optimizer=config.optimizer.implementation)
    memory = estimate(model, shape, ZeroBuffers.from_template(ds))
    usable = cluster.device.memory_bytes * (1 - rates.headroom)
    params = count_parameters(model).total
    layout = comm_volume.Layout(world, tp, par.zero_stage, sched.global_batch_size, sched.micro_batch_size,
                                model.max_seq_len)
    dp_comm = comm_volume.dp_bytes(params, layout, shape.value_bytes)
    tp_comm = comm_volume.tp_bytes(model, layout, shape.value_bytes)
    per_token = flops_per_token(model, model.max_seq_len)
    tokens_per_step = sched.global_batch_size * model.max_seq_len
    peak = cluster.device.peak_flops
    tokens_per_s = world * rates.mfu * peak / per_token if peak else None
    compute_s = tokens_per_step / tokens_per_s if tokens_per_s else None
    comm_s = dp_comm / (rates.bandwidth * 1e9) + tp_comm / (rates.tp_bandwidth * 1e9)
    parts = {name: getattr(memory, name) / GIB for name in MEMORY_PARTS}
    return {
        "config": config_path, "overrides": list(overrides or []),
        "model": {"architecture": model.architecture, "preset": config.model.preset, "parameters": params,
                  "parameters_per_gpu": rank_parameters(model, tp)[0], "num_layers": model.num_layers,
                  "hidden_size": model.hidden_size, "seq_len": model.max_seq_len, "vocab_size": model.vocab_size},
        "gpu": cluster.device.name, "gpu_memory_gb": cluster.device.memory_gib, "usable_memory_gb": usable / GIB,
        "nodes": cluster.nodes, "gpus_per_node": cluster.gpus_per_node, "world_size": world, "tp": tp, "dp": dp,
        "zero_stage": par.zero_stage, "sequence_parallel": shape.sequence_parallel, "recompute": par.recompute,
        "precision": "bf16" if bf16 else "fp32", "micro_batch": sched.micro_batch_size,
        "global_batch": sched.global_batch_size, "accumulation_steps": layout.accumulation,
        "tokens_per_step": tokens_per_step,
        "memory_per_gpu_gb": {**parts, "total": memory.total / GIB},
        "fits": memory.total <= usable,
        "comm_bytes_per_step": {"dp": dp_comm, "tp": tp_comm},
        "comm_s_per_step": comm_s,
        "flops_per_token": per_token, "mfu": rates.mfu, "peak_tflops": peak / 1e12 if peak else None,
        "tokens_per_s_estimate": tokens_per_s, "compute_s_per_step": compute_s,
        "assumptions": assumptions(config, model, shape, rates, cluster),
    }


def assumptions(config, model, shape: JobShape, rates: Rates, cluster: Cluster) -> list[str]:
    """What the numbers take for granted, in words (the JSON's ``assumptions``)."""
    notes = [
        "memory in GiB (2^30 bytes) per GPU; total = parameters + gradients + optimizer + buffers + "
        "max(activations, optimizer_step_temporary): the step runs after the activations are freed",
        f"fits: total <= {1 - rates.headroom:.0%} of the device memory (the rest: CUDA context, NCCL, fragmentation)",
        f"optimizer: torch AdamW, {config.optimizer.implementation} (m, v in fp32); DeepSpeed 0.19.8 keeps fp32 "
        "master weights in bf16 and, under ZeRO 1-3, a cloned fp32 partition even in fp32",
        "activations: one micro batch, peak at the start of backward (every block's saved tensors + the loss head's "
        "logits, fp32 softmax and its gradient)",
        f"model: {model.num_layers} pre-norm blocks of {model.architecture!r}'s config (the shared GPT block); tensors "
        "a model keeps beyond its blocks, embedding and loss head are not modelled",
        f"tokens/s = GPUs x MFU {rates.mfu:g} x peak / model FLOPs per token (6N + 12 L S H, dense attention "
        "convention, as the logged MFU); recompute's extra forward is not in it",
        f"communication: ring collectives, values of {shape.value_bytes} B; time at {rates.bandwidth:g} GB/s per GPU "
        f"(DP/ZeRO, inter-node) and {rates.tp_bandwidth:g} GB/s (TP, NVLink); overlap with backward not assumed",
    ]
    if config.schedule.ramp_start_batch_size:
        notes.append(f"batch ramp from {config.schedule.ramp_start_batch_size} sequences: sized at the peak global "
                     "batch (memory does not depend on it; communication per step does)")
    if cluster.device.gpu:
        notes.append("attention: FlexAttention / flash on the GPU (no S x S tensor kept)")
    else:
        notes.append("attention: the CPU's dense SDPA with a [B, 1, S, S] mask (an additive copy saved per block); "
                     "CPU buffers count only the pages written")
    if config.parallel.sequence_parallel and shape.tp == 1:
        notes.append("parallel.sequence_parallel has no effect at tensor_parallel_size 1")
    if config.parallel.compile:
        notes.append("parallel.compile: torch.compile may save fewer activations than modelled")
    if config.parallel.ds_config and "offload" in config.parallel.ds_config:
        notes.append(f"{config.parallel.ds_config}: CPU offload is not modelled (GPU optimizer state counted)")
    if not cluster.device.peak_flops:
        notes.append(f"{cluster.device.name}: no peak FLOP/s known, no tokens/s estimate")
    return notes


def table(result: dict) -> str:
    """The plan for a terminal."""
    m, mem = result["model"], result["memory_per_gpu_gb"]
    gib = " | ".join(f"{k.replace('optimizer_step_temporary', 'step temp')} {mem[k]:.2f}" for k in MEMORY_PARTS)
    rate = result["tokens_per_s_estimate"]
    lines = [
        f"{result['config']}: {m['architecture']} {m['parameters'] / 1e6:,.0f} M parameters, {m['num_layers']} layers, "
        f"seq {m['seq_len']}",
        f"{result['nodes']} x {result['gpus_per_node']} {result['gpu']} ({result['gpu_memory_gb']:.1f} GiB): "
        f"TP {result['tp']} x DP {result['dp']}, ZeRO-{result['zero_stage']}, {result['precision']}, recompute "
        f"{result['recompute']}, SP {'on' if result['sequence_parallel'] else 'off'}; micro batch "
        f"{result['micro_batch']} x {result['accumulation_steps']} accumulation steps x DP = "
        f"{result['global_batch']} sequences",
        f"memory per GPU (GiB): {gib}",
        f"total {mem['total']:.2f} GiB of {result['usable_memory_gb']:.1f} usable: "
        f"{'fits' if result['fits'] else 'DOES NOT FIT'}",
        f"per step per GPU: DP {result['comm_bytes_per_step']['dp'] / 1e9:.2f} GB, TP "
        f"{result['comm_bytes_per_step']['tp'] / 1e9:.2f} GB "
        f"({result['comm_s_per_step']:.3f} s at the assumed bandwidths)",
        (f"{rate:,.0f} tokens/s at MFU {result['mfu']:g} ({result['compute_s_per_step']:.3f} s of compute per step)"
         if rate else "tokens/s: no estimate (no peak FLOP/s for this device)"),
    ]
    return "\n".join(lines)


def _refuse(message: str):
    raise LaunchError(message)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("megacompress.launch.plan", __doc__, script="tools/plan_job.py")
    parser.error = _refuse  # a bad flag is one "error: ..." line and exit 2, like every user error
    parser.add_argument("--config", required=True, help="training config YAML (e.g. configs/baseline12.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable (e.g. --set schedule.micro_batch_size=4)")
    parser.add_argument("--nodes", type=int, default=1, help="number of nodes")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (processes per node)")
    parser.add_argument("--gpu", default="h100-80gb", choices=device_names(),
                        help="the accelerator (cpu: this machine's RAM, fp32, dense attention)")
    parser.add_argument("--mfu", type=float, default=Rates.mfu,
                        help="model FLOPs utilisation assumed for the tokens/s estimate")
    parser.add_argument("--headroom", type=float, default=Rates.headroom,
                        help="fraction of device memory kept free (CUDA context, NCCL, fragmentation)")
    parser.add_argument("--bandwidth", type=float, default=Rates.bandwidth,
                        help="GB/s per GPU for DP/ZeRO collectives (inter-node)")
    parser.add_argument("--tp-bandwidth", type=float, default=Rates.tp_bandwidth,
                        help="GB/s per GPU for TP all-reduces (NVLink)")
    parser.add_argument("--out", type=Path, default=None, help="also write the plan as JSON to this file")
    parser.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    args = parser.parse_args(argv)
    checks = [(args.nodes >= 1, "--nodes must be >= 1"), (args.gpus_per_node >= 1, "--gpus-per-node must be >= 1"),
              (0 < args.mfu <= 1, "--mfu must be in (0, 1]"), (0 <= args.headroom < 1, "--headroom must be in [0, 1)"),
              (args.bandwidth > 0 and args.tp_bandwidth > 0, "--bandwidth and --tp-bandwidth must be > 0")]
    for ok, message in checks:
        if not ok:
            raise LaunchError(message)
    cluster = Cluster(args.nodes, args.gpus_per_node, get_device(args.gpu))
    result = plan(args.config, cluster, Rates(args.mfu, args.headroom, args.bandwidth, args.tp_bandwidth),
                  args.overrides)
    text = json.dumps(result, indent=2)
    print(text if args.json else table(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
