"""Compiled blocks (``parallel.compile``): compile time and step time against eager, on this CPU.

    python benchmarks/compile.py [--quick] [--out benchmarks/results/compile.json]

For the tiny GPT (configs/tiny_gpt.yaml's preset) and Baseline-12 (``--quick``: 2 of its 12
layers), ``--batch`` sequences of ``--seq`` tokens with the document-causal mask, one child
process per case (eager, compiled; each with recompute none and full) with a fresh inductor
cache (so the compile is cold, as a new run's is). Per case: the first step's time (for a
compiled model, mostly compiling), the median of the next ``--steps`` forward + backward
steps, the compile time (first step minus the median) and the step-time ratio to eager with
the same recompute mode; loss and gradient norm must equal eager's within 1e-4. Writes JSON
and a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import packed_documents  # noqa: E402
from report import pyplot, save_figure, save_report  # noqa: E402

CASES = [(compiled, recompute) for recompute in ("none", "full") for compiled in (False, True)]


def child(preset: str, layers: int, batch: int, seq: int, steps: int, compiled: bool, recompute: str) -> dict:
    """One case in this process."""
    import torch

    from megacompress.models.config import ModelConfig
    from megacompress.models.registry import build_model
    from megacompress.training.compile import apply_compile
    from megacompress.training.recompute import apply_recompute

    config = ModelConfig.from_preset(preset, num_layers=layers, max_seq_len=seq)
    model = build_model(config, seed=0)
    apply_compile(model, compiled)
    apply_recompute(model, recompute)
    inputs = packed_documents(config.vocab_size, batch, seq)
    times = []
    for _ in range(steps + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = model(**inputs).loss
        loss.backward()
        times.append(time.perf_counter() - start)
    norm = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    step = statistics.median(times[1:])
    return {"model": preset, "layers": layers, "compiled": compiled, "recompute": recompute,
            "first_step_s": times[0], "step_s": step, "compile_s": times[0] - step if compiled else 0.0,
            "loss": float(loss.detach()), "grad_norm": float(norm)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="Baseline-12 with 2 layers instead of 12")
    p.add_argument("--batch", type=int, default=2, help="sequences per step")
    p.add_argument("--seq", type=int, default=512, help="tokens per sequence")
    p.add_argument("--steps", type=int, default=3, help="timed steps after the first (median)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "compile.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        preset, layers, compiled, recompute = json.loads(args.child)
        print(json.dumps(child(preset, layers, args.batch, args.seq, args.steps, compiled, recompute)))
        return
    results = []
    for preset, layers in (("tiny", 2), ("baseline-12", 2 if args.quick else 12)):
        for compiled, recompute in CASES:
            with tempfile.TemporaryDirectory() as cache:
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache,
                           OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
                case = json.dumps([preset, layers, compiled, recompute])
                out = subprocess.run([sys.executable, __file__, "--child", case, "--batch", str(args.batch),
                                      "--seq", str(args.seq), "--steps", str(args.steps)],
                                     env=env, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            eager = next((x for x in results if x["model"] == preset and x["recompute"] == recompute
                          and not x["compiled"]), r)
            r["step_time_ratio_to_eager"] = r["step_s"] / eager["step_s"]
            r["same_as_eager"] = (abs(r["loss"] - eager["loss"]) < 1e-4
                                  and abs(r["grad_norm"] - eager["grad_norm"]) < 1e-4)
            results.append(r)
            print(f"{preset} ({layers} layers) {'compiled' if compiled else 'eager':8} recompute={recompute:4}: "
                  f"first step {r['first_step_s']:6.1f} s, step {r['step_s']:.3f} s "
                  f"({r['step_time_ratio_to_eager']:.2f}x eager), compile {r['compile_s']:.1f} s, "
                  f"same numbers: {r['same_as_eager']}", flush=True)
    report = {"batch": args.batch, "seq": args.seq, "results": results}
    save_report(report, args.out, plot)


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
    compiled = [r for r in report["results"] if r["compiled"]]
    labels = [f"{r['model']}\n{r['recompute']}" for r in compiled]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.bar(labels, [r["step_time_ratio_to_eager"] for r in compiled])
    left.axhline(1.0, color="grey", linestyle="--")
    left.set_ylabel("compiled step time / eager")
    right.bar(labels, [r["compile_s"] for r in compiled])
    right.set_ylabel("compile time (s)")
    fig.suptitle(f"{report['batch']} x {report['seq']} tokens, CPU")
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
