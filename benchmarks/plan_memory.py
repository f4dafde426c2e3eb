"""The job planner's memory model against measured peaks: ZeRO 0-3 x recompute none / full, on the CPU.

    python benchmarks/plan_memory.py [--quick] [--out benchmarks/results/plan_memory.json]

For the tiny GPT (configs/tiny_gpt.yaml: 2 layers, width 64, seq 128, micro batch 4) and
Baseline-12 (configs/baseline12.yaml: 12 layers, width 768, GPT-2 vocabulary; seq 512, micro
batch 2; ``--quick``: 4 layers), every case runs in its own child process (independent peaks):
a one-process gloo group, the config's model, torch AdamW and ``deepspeed.initialize`` with the
DeepSpeed config the trainer would build (`megacompress.training.ds_config`, fp32, the
template ``ds_configs/zero{stage}.json``), ``parallel.recompute`` applied as the trainer does,
then 2 optimizer steps of 2 accumulated micro batches each (synthetic tokens, document-causal
mask as packed data gives, the trainer's per-token loss scaling), so that the second step
has gradients, Adam state and a micro batch's activations alive together, as in a real run.

Measured: the process's peak resident memory (``ru_maxrss``) minus its resident memory just
before the model is built (after torch, DeepSpeed and the process group are up). Children
run with ``MALLOC_MMAP_THRESHOLD_=262144`` so that glibc hands every freed tensor back to the
OS (its default keeps freed heap memory resident and grows its mmap threshold, so the RSS
would count memory torch has already freed): the RSS then follows live tensors, as a GPU
allocator's ``max_memory_allocated`` does. Predicted: ``megacompress launch plan --gpu cpu``'s
total for the same config and overrides. Writes JSON (``results``: per case measured and
predicted bytes, the planner's parts, the ratio) and a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megacompress.atomic import write_text_atomic  # noqa: E402
from report import pyplot, save_figure, save_report  # noqa: E402
from harness import free_port  # noqa: E402

STEPS, ACCUMULATION = 2, 2
# model -> (config, overrides; the quick run's extra overrides)
MODELS = {
    "tiny": ("configs/tiny_gpt.yaml", ["schedule.micro_batch_size=4"], []),
    "baseline-12": ("configs/baseline12.yaml", ["model.max_seq_len=512", "schedule.micro_batch_size=2",
                                                "schedule.ramp_start_batch_size=0"], ["model.num_layers=4"]),
}
GIB = 2**30


def overrides(model: str, zero: int, recompute: str, quick: bool) -> list[str]:
    _, common, fast = MODELS[model]
    micro = int(next(o for o in common if o.startswith("schedule.micro_batch_size=")).split("=")[1])
    return [*common, *(fast if quick else []), f"schedule.global_batch_size={micro * ACCUMULATION}",
            f"parallel.zero_stage={zero}", f"parallel.recompute={recompute}", "parallel.precision=fp32",
            "parallel.ds_config=", "schedule.warmup_steps=1"]


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def child(config_path: str, sets: list[str]) -> dict:
    """One case in this process: build, 2 steps; the peak above the RSS before the model."""
    import torch

    from megacompress.models.registry import build_model
    from megacompress.parallel import state
    from megacompress.training.config import OPTIMIZER_IMPLEMENTATIONS, load_config
    from megacompress.training.ds_config import build_ds_config
    from megacompress.training.recompute import apply_recompute
    from megacompress.training.trainer import import_deepspeed, parameter_groups

    deepspeed = import_deepspeed()
    deepspeed.init_distributed(dist_backend="gloo")
    state.initialize(1)
    config = load_config(REPO / config_path, sets)
    model_config = config.model.build()
    ds_config = build_ds_config(config, 1, on_gpu=False)
    warm_up(deepspeed, ds_config)
    torch.manual_seed(0)
    before, peak_before = rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model = build_model(model_config, seed=config.seed)
    apply_recompute(model, config.parallel.recompute)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.optimizer.weight_decay), lr=1e-4,
                                  **OPTIMIZER_IMPLEMENTATIONS[config.optimizer.implementation])
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, mpu=state.mpu,
                                      config=ds_config)
    built = rss_bytes()
    micro, seq = config.schedule.micro_batch_size, model_config.max_seq_len
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(STEPS):
        batches = [torch.randint(0, model_config.vocab_size, (micro, seq + 1), generator=generator)
                   for _ in range(ACCUMULATION)]
        scale = 1.0 / (ACCUMULATION * micro * seq)
        for i, ids in enumerate(batches):
            engine.set_gradient_accumulation_boundary(i == ACCUMULATION - 1)
            out = engine(input_ids=ids[:, :-1], position_ids=torch.arange(seq).expand(micro, seq),
                         document_ids=torch.zeros(micro, seq, dtype=torch.long), labels=ids[:, 1:])
            engine.backward(out.loss_sum * scale, scale_wrt_gas=False)
            engine.step()  # a real step at the boundary, bookkeeping before it
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rss_before": before, "peak_before": peak_before, "rss_built": built, "peak": peak,
            "measured_bytes": peak - before, "built_bytes": built - before, "steps_s": seconds}


def warm_up(deepspeed, ds_config: dict) -> None:
    """Initialise a throwaway engine (one small linear) with the same DeepSpeed config: the
    ~1,400 modules ``deepspeed.initialize`` imports (torch.compile's among them, ~110 MB) are
    then resident before the baseline is read, so the measurement holds tensors, not code."""
    import gc

    import torch

    from megacompress.parallel import state

    layer = torch.nn.Linear(64, 64)
    engine, *_ = deepspeed.initialize(model=layer, optimizer=torch.optim.AdamW(layer.parameters()), mpu=state.mpu,
                                      config=ds_config)
    engine.backward(engine(torch.ones(1, 64)).sum())
    engine.step()
    del engine, layer
    gc.collect()


def run_case(model: str, zero: int, recompute: str, quick: bool) -> dict:
    config_path = MODELS[model][0]
    sets = overrides(model, zero, recompute, quick)
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
               MALLOC_MMAP_THRESHOLD_="262144", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, __file__, "--child", config_path, *sets], env=env, cwd=REPO,
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"case {model} zero{zero} {recompute} failed:\n{proc.stderr[-3000:]}")
    measured = json.loads(lines[-1][len("RESULT "):])
    return {"model": model, "zero_stage": zero, "recompute": recompute, "overrides": sets, **measured,
            **predict(model, sets, measured["measured_bytes"])}


def predict(model: str, sets: list[str], measured: float) -> dict:
    """The planner's prediction for one case (``--gpu cpu``, one process) and measured / predicted."""
    from megacompress.launch.devices import cpu_device
    from megacompress.launch.plan import Cluster, plan

    predicted = plan(MODELS[model][0], Cluster(1, 1, cpu_device()), overrides=sets)
    total = predicted["memory_per_gpu_gb"]["total"] * GIB
    return {"parameters": predicted["model"]["parameters"], "predicted_bytes": total,
            "predicted_parts_gib": predicted["memory_per_gpu_gb"], "ratio": measured / total}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="Baseline-12 with 4 layers instead of 12")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="models to measure")
    p.add_argument("--stages", nargs="+", type=int, default=[0, 1, 2, 3], help="ZeRO stages to measure")
    p.add_argument("--recompute", nargs="+", default=["none", "full"], help="parallel.recompute modes to measure")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "plan_memory.json",
                   help="JSON output (the PNG goes next to it)")
    p.add_argument("--predict-only", action="store_true",
                   help="keep the measurements in --out and recompute only the planner's predictions and ratios")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], args.child[1:])), flush=True)
        return
    if args.predict_only:
        report = json.loads(args.out.read_text())
        for r in report["results"]:
            r.update(predict(r["model"], r["overrides"], r["measured_bytes"]))
            print(f"{r['model']:>11} ZeRO-{r['zero_stage']} {r['recompute']:>4}: ratio {r['ratio']:.3f}")
        write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
        plot(report, args.out.with_suffix(".png"))
        return
    started = time.perf_counter()
    results = []
    for model in args.models:
        for zero in args.stages:
            for recompute in args.recompute:
                r = run_case(model, zero, recompute, args.quick)
                results.append(r)
                print(f"{model:>11} ZeRO-{zero} {recompute:>4}: measured {r['measured_bytes'] / GIB:6.3f} GiB, "
                      f"predicted {r['predicted_bytes'] / GIB:6.3f} GiB, ratio {r['ratio']:.3f} "
                      f"({r['steps_s']:.0f} s)", flush=True)
    report = {"quick": args.quick, "steps": STEPS, "accumulation": ACCUMULATION, "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg(), "wall_s": time.perf_counter() - started, "results": results}
    save_report(report, args.out, plot, f" ({report['wall_s']:.0f} s)")


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
    models = list(dict.fromkeys(r["model"] for r in report["results"]))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [r for r in report["results"] if r["model"] == model]
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r["measured_bytes"] / GIB for r in rows], 0.4, label="measured peak")
        ax.bar([i + 0.2 for i in x], [r["predicted_bytes"] / GIB for r in rows], 0.4, label="planner")
        for i, r in zip(x, rows):
            ax.text(i, max(r["measured_bytes"], r["predicted_bytes"]) / GIB, f"{r['ratio']:.2f}", ha="center",
                    va="bottom")
        ax.set_xticks(list(x), [f"Z{r['zero_stage']} {r['recompute']}" for r in rows], rotation=45)
        ax.set_ylabel("GiB above the process before the model")
        ax.set_title(f"{model}{' (quick)' if report['quick'] else ''}: measured / predicted")
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
