"""The M1 learning curve: validation bits/byte vs bytes seen, from a training run's metrics.

    python benchmarks/m1_curve.py --run runs/m1 [--model runs/m1/export --data-prefix runs/m1/data/valid_text_document]

Reads ``RUN/metrics.jsonl`` (the engine's validation loss every ``eval.interval`` steps, nats
per byte token, on ``eval.iters`` micro batches; bits/byte = loss / ln 2, the few
end-of-document tokens counted as bytes), joins each with the bytes seen by then, and fits
bits/byte = a * bytes^(-c) to the second half of the curve to say how many bytes the same
recipe would need to reach the paper's 1.457 (a rough extrapolation: the power law bends
towards the model's floor, so the true need is larger). With ``--model`` and
``--data-prefix`` it also scores the exported M1 on the whole validation shard with
``megacompress equal-info evaluate`` (exact bits/byte of the text). Writes ``--out`` (JSON,
default ``benchmarks/results/m1_curve.json``) and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megacompress.atomic import atomic_write, write_text_atomic  # noqa: E402

PAPER_BITS_PER_BYTE = 1.457  # the paper's M1 on C4 validation (docs/equal_info.md, "Published results")


def curve(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    seen = {r["step"]: r["tokens_seen"] for r in records if r.get("split") == "train"}
    per_step = next((r["tokens_seen"] / r["step"] for r in records if r.get("split") == "train"), None)
    return [{"step": r["step"], "bytes_seen": int(seen.get(r["step"], r["step"] * (per_step or 0))),
             "valid_bits_per_byte": r["loss"] / math.log(2)}
            for r in records if r.get("split") == "valid"]


def extrapolate(points: list[dict]) -> dict:
    tail = points[len(points) // 2:]
    if len(tail) < 2:
        return {}
    x = np.log([p["bytes_seen"] for p in tail])
    y = np.log([p["valid_bits_per_byte"] for p in tail])
    slope, intercept = np.polyfit(x, y, 1)
    fit = {"a": float(math.exp(intercept)), "c": float(-slope), "fitted_points": len(tail)}
    if slope < 0:
        fit["bytes_to_paper"] = float(math.exp((math.log(PAPER_BITS_PER_BYTE) - intercept) / slope))
    return fit


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="the M1 training run directory (logging.run_dir)")
    p.add_argument("--model", help="the exported M1, scored on --data-prefix")
    p.add_argument("--data-prefix", help="validation bytes shard (megacompress preprocess --tokenizer bytes)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "m1_curve.json")
    args = p.parse_args(argv)
    points = curve(args.run)
    report = {"run": str(args.run), "points": points, "paper_bits_per_byte": PAPER_BITS_PER_BYTE,
              "fit": extrapolate(points)}
    if args.model and args.data_prefix:
        from megacompress.methods.equal_info.evaluate import bits_per_byte
        from megacompress.models.registry import load_pretrained

        report["final"] = {"model": args.model, "data_prefix": args.data_prefix,
                           **bits_per_byte(load_pretrained(args.model), args.data_prefix)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    plot(report, args.out.with_suffix(".png"))
    for q in points:
        print(f"step {q['step']:>5}  {q['bytes_seen'] / 1e6:7.2f} M bytes seen  {q['valid_bits_per_byte']:.3f} bits/byte")
    if "final" in report:
        print(f"final: {report['final']['bits_per_byte']:.3f} bits/byte on {report['final']['bytes']:,} bytes")
    if "bytes_to_paper" in report["fit"]:
        print(f"power-law fit of the second half: {PAPER_BITS_PER_BYTE} bits/byte after "
              f"~{report['fit']['bytes_to_paper']:.3g} bytes (a lower bound)")
    print(f"wrote {args.out} and {args.out.with_suffix('.png').name}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report["points"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([q["bytes_seen"] for q in points], [q["valid_bits_per_byte"] for q in points], "o-", label="validation")
    fit = report["fit"]
    if "bytes_to_paper" in fit:
        xs = np.geomspace(points[len(points) // 2]["bytes_seen"], fit["bytes_to_paper"], 50)
        ax.plot(xs, fit["a"] * xs ** -fit["c"], "--", label="power-law fit (second half)")
    ax.axhline(report["paper_bits_per_byte"], color="gray", ls=":", label="paper M1 (C4)")
    ax.set_xscale("log")
    ax.set_xlabel("bytes seen")
    ax.set_ylabel("bits / byte")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


if __name__ == "__main__":
    main()
