"""Sequence parallelism: activation bytes per rank and step time at TP=2, with and without it.

    python benchmarks/sequence_parallel.py [--quick] [--out benchmarks/results/sequence_parallel.json]

Baseline-12 (12 layers, width 768, GPT-2 vocabulary; ``--quick``: 2 layers) at TP=2 on two
gloo processes of this CPU (torchrun), ``--batch`` sequences of ``--seq`` tokens with the
document-causal mask, for ``parallel.sequence_parallel`` off / on, each with ``recompute``
none and selective. Per case: the bytes each rank saves for backward during the forward
(`megacompress.training.activation_memory`: exact, allocator-independent), the ratio to the
same recompute mode without sequence parallelism, the median time of ``--steps`` forward +
backward steps, and the loss and gradient norm (which must not change). Writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import free_port, packed_documents  # noqa: E402
from report import pyplot, save_figure, save_report  # noqa: E402

CASES = [(sp, recompute) for recompute in ("none", "selective") for sp in (False, True)]


def worker(layers: int, batch: int, seq: int, steps: int, out: Path) -> None:
    """Every case on this TP rank; rank 0 writes the results to ``out``."""
    import torch

    from megacompress.models.config import ModelConfig
    from megacompress.models.registry import build_model
    from megacompress.parallel import state
    from megacompress.parallel.grads import grad_norm
    from megacompress.training.activation_memory import saved_activation_bytes
    from megacompress.training.recompute import apply_recompute
    from megacompress.training.sequence_parallel import apply_sequence_parallel

    torch.set_num_threads(1)
    state.initialize(tensor_parallel_size=2, backend="gloo")
    config = ModelConfig.from_preset("baseline-12", num_layers=layers, max_seq_len=seq)
    inputs = packed_documents(config.vocab_size, batch, seq)
    results = []
    for sp, recompute in CASES:
        model = build_model(config, seed=0)
        apply_recompute(model, recompute)
        apply_sequence_parallel(model, sp)
        times, saved = [], 0
        for _ in range(steps):
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            output, saved = saved_activation_bytes(lambda: model(**inputs), model.parameters())
            output.loss.backward()
            times.append(time.perf_counter() - start)
        results.append({"sequence_parallel": sp, "recompute": recompute, "saved_bytes_per_rank": saved,
                        "step_s": statistics.median(times), "loss": float(output.loss.detach()),
                        "grad_norm": float(grad_norm(list(model.parameters())))})
    for r in results:
        ref = next(x for x in results if x["recompute"] == r["recompute"] and not x["sequence_parallel"])
        r["ratio_to_no_sp"] = r["saved_bytes_per_rank"] / ref["saved_bytes_per_rank"]
        r["step_time_ratio_to_no_sp"] = r["step_s"] / ref["step_s"]
        r["same_as_no_sp"] = abs(r["loss"] - ref["loss"]) < 1e-4 and abs(r["grad_norm"] - ref["grad_norm"]) < 1e-4
    if state.get_rank() == 0:
        report = {"model": f"baseline-12 with {layers} layers", "tensor_parallel_size": 2, "batch": batch,
                  "seq": seq, "results": results}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report))  # for the parent, which writes the report
    state.destroy()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 layers instead of 12")
    p.add_argument("--batch", type=int, default=2, help="sequences per step")
    p.add_argument("--seq", type=int, default=512, help="tokens per sequence")
    p.add_argument("--steps", type=int, default=3, help="timed steps per case (median)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sequence_parallel.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    layers = 2 if args.quick else 12
    if args.worker:
        return worker(layers, args.batch, args.seq, args.steps, args.out)
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
                    f"--master-port={free_port()}", __file__, "--worker", "--batch", str(args.batch),
                    "--seq", str(args.seq), "--steps", str(args.steps), "--out", str(args.out),
                    *(["--quick"] if args.quick else [])],
                   env=env, check=True)
    report = json.loads(args.out.read_text())
    for r in report["results"]:
        print(f"sequence_parallel={str(r['sequence_parallel']).lower():5} recompute={r['recompute']:9}: "
              f"{r['saved_bytes_per_rank'] / 2**20:8.1f} MiB saved per rank ({r['ratio_to_no_sp']:.3f}x), "
              f"step {r['step_s']:.2f} s ({r['step_time_ratio_to_no_sp']:.2f}x), same numbers: {r['same_as_no_sp']}")
    save_report(report, args.out, plot)


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
    results = report["results"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{'SP' if r['sequence_parallel'] else 'no SP'}\n{r['recompute']}" for r in results]
    ax.bar(labels, [r["saved_bytes_per_rank"] / 2**20 for r in results])
    for i, r in enumerate(results):
        ax.text(i, r["saved_bytes_per_rank"] / 2**20, f"{r['ratio_to_no_sp']:.2f}x", ha="center", va="bottom")
    ax.set_ylabel("activations saved per rank (MiB)")
    ax.set_title(f"{report['model']}, TP=2, {report['batch']} x {report['seq']} tokens")
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
