"""Activation recompute: peak memory of one training step per ``parallel.recompute`` mode.

    python benchmarks/recompute.py [--quick] [--out benchmarks/results/recompute.json]

Baseline-12 (docs/models.md: 12 layers, width 768, GPT-2 vocabulary; ``--quick``: 4 layers) on
the CPU, one process per mode (none, full, selective), each doing the same forward + backward
of ``--batch`` sequences of ``--seq`` tokens (the document-causal mask, dense SDPA). Each child
reports its peak resident memory (``ru_maxrss``) after the step and before it (model, gradients
allocated by a warm-up step), so ``step_peak_gb`` = the step's activations (and transient
buffers); the ratio to ``none`` is the saving. Loss and gradient norm must equal ``none``'s.
Writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from report import pyplot, save_figure, save_report  # noqa: E402
from megacompress.training.config import RECOMPUTE_MODES as MODES  # noqa: E402


def child(mode: str, layers: int, batch: int, seq: int) -> dict:
    """One step of ``mode`` in this process; peak RSS before and after (MB)."""
    import resource
    import time

    import torch

    from megacompress.models.config import ModelConfig
    from megacompress.models.registry import build_model
    from megacompress.training.recompute import apply_recompute

    torch.manual_seed(0)
    config = ModelConfig.from_preset("baseline-12", num_layers=layers, max_seq_len=seq)
    model = build_model(config, seed=0)
    apply_recompute(model, mode)
    ids = torch.randint(0, 50257, (batch, seq))
    positions = torch.arange(seq).expand(batch, seq)
    documents = torch.zeros_like(ids)

    def step() -> tuple[float, float]:
        model.zero_grad(set_to_none=False)
        logits = model(ids, positions, documents).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        norm = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        return float(loss), float(norm)

    with torch.no_grad():  # gradients exist before the measured step (as after an optimizer's first step)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    loss, norm = step()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "layers": layers, "batch": batch, "seq": seq, "peak_before_mb": before,
            "peak_after_mb": after, "step_peak_gb": (after - before) / 1024, "step_s": seconds,
            "loss": loss, "grad_norm": norm}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 layers instead of 12")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "recompute.json")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    layers = 4 if args.quick else 12
    if args.child:
        print(json.dumps(child(args.child, layers, args.batch, args.seq)))
        return
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    results = []
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--batch", str(args.batch), "--seq",
                              str(args.seq), *(["--quick"] if args.quick else [])],
                             env=env, capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{mode:>9}: step peak {r['step_peak_gb']:.2f} GB over the model and gradients "
              f"({r['peak_before_mb'] / 1024:.2f} GB), {r['step_s']:.1f} s, loss {r['loss']:.6f}, "
              f"grad norm {r['grad_norm']:.6f}", flush=True)
    ref = results[0]
    for r in results:
        r["ratio_to_none"] = r["step_peak_gb"] / ref["step_peak_gb"] if ref["step_peak_gb"] > 0 else None
        r["same_as_none"] = abs(r["loss"] - ref["loss"]) < 1e-5 and abs(r["grad_norm"] - ref["grad_norm"]) < 1e-5
    report = {"model": f"baseline-12 with {layers} layers", "results": results}
    save_report(report, args.out, plot)


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
    results = report["results"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar([r["mode"] for r in results], [r["step_peak_gb"] for r in results])
    for i, r in enumerate(results):
        ax.text(i, r["step_peak_gb"], f"{r['ratio_to_none']:.2f}x, {r['step_s']:.0f} s", ha="center", va="bottom")
    ax.set_ylabel("peak memory of one step above the model (GB)")
    ax.set_title(report["model"])
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
