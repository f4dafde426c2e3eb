"""Plot one or more runs: ``python tools/plot_run.py RUN_DIR [RUN_DIR ...] --out FILE.png``.

Reads each ``RUN_DIR/metrics.jsonl`` (docs/training.md, "Metrics") and draws, on shared
step axes, the training loss, the validation loss, the learning rate and the throughput,
one colour per run (labelled by the directory name). Lines of steps replayed after a
resume are drawn once: the later line for a step wins.
"""

from __future__ import annotations

import json
from pathlib import Path

from megacompress import cli
from megacompress.atomic import atomic_write

PANELS = (("train", "loss", "training loss"), ("valid", "loss", "validation loss"),
          ("train", "lr", "learning rate"), ("train", "tokens_per_s", "tokens/s"))


def read_run(run_dir: Path) -> dict[str, dict[int, dict]]:
    """{split: {step: line}} of ``run_dir/metrics.jsonl`` (a later line for a step replaces an earlier one)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics (is {run_dir} a training run directory?)")
    lines: dict[str, dict[int, dict]] = {"train": {}, "valid": {}}
    for number, text in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{number}: not a JSON line") from None
        if record.get("split") in lines:
            lines[record["split"]][record["step"]] = record
    return lines


def plot(runs: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for run in runs:
        lines = read_run(run)
        for ax, (split, key, title) in zip(axes.flat, PANELS):
            points = sorted((step, r[key]) for step, r in lines[split].items() if r.get(key) is not None)
            if points:
                ax.plot(*zip(*points), marker="." if len(points) < 30 else None, label=run.name)
            ax.set_title(title)
    for ax in axes[1]:
        ax.set_xlabel("step")
    axes[0, 0].legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("megacompress.training.plot", __doc__.split("\n\n")[0], script="tools/plot_run.py")
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="training run directories")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    args = parser.parse_args(argv)
    plot(args.runs, args.out)
    print(f"wrote {args.out}")
    return 0
