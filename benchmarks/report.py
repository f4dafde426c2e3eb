"""What every benchmark ends with: its JSON report and its PNG, both written atomically."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from megacompress.atomic import atomic_write, write_text_atomic


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def save_report(report: dict, out: Path, plot: Callable[[dict, Path], None], extra: str = "") -> None:
    """``out`` (JSON) and ``plot(report, out.with_suffix(".png"))``; says where they are."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png').name}{extra}")
