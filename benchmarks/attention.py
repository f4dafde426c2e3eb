"""Attention backends benchmark: time per mask pattern, as a ratio to SDPA ``is_causal=True``.

For every sequence length and mask kind it times each backend that can run here:
``sdpa`` (dense bool mask) forward+backward, ``flex`` forward+backward on CUDA and
forward only on CPU (no CPU backward in torch), ``flash`` forward+backward on CUDA
when flash-attn is installed (block-diagonal kinds). The baseline is plain SDPA
``is_causal=True`` on the same shapes, timed in the same mode (``fwd`` or
``fwd+bwd``), alternating with the measured backend so that load drift on a
shared machine hits both. Times are medians of ``--repeats`` runs after ``--warmup`` runs;
mask preparation (dense mask / BlockMask / cu_seqlens) is timed separately
because it happens once per batch, not once per layer.

Writes ``attention.json`` and ``attention.png`` to ``--out`` (default
``benchmarks/results``)::

    python benchmarks/attention.py                      # CPU defaults, ~2 min on 2 cores
    python benchmarks/attention.py --seq-lens 512 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from megacompress.atomic import atomic_write
from megacompress.attention import dispatch, masks
from megacompress.attention.dispatch import AttentionMask, attend, prepare
from megacompress.progress import progress


def metadata(B: int, S: int, device: torch.device) -> dict:
    """Realistic layout: 2 documents + 5% padding per row, a sentence end every ~27 tokens, 4 gists."""
    g = torch.Generator().manual_seed(0)
    real = S - S // 20
    doc = torch.full((B, S), -1, dtype=torch.long)
    doc[:, :real] = 0
    doc[:, real // 2 : real] = 1
    eos = (torch.rand(B, S, generator=g) < 1 / 27) & (doc >= 0)
    gist_start = torch.full((B,), S // 8, dtype=torch.long)
    meta = dict(document_ids=doc, eos_mask=eos, gist_start=gist_start, gist_end=gist_start + 4)
    return {k: v.to(device) for k, v in meta.items()}


def paired_median_times(fn, baseline, warmup: int, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median wall-clock seconds of ``fn()`` and ``baseline()``, run alternately so load drift hits both."""

    def timed(f) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        f()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    times: tuple[list[float], list[float]] = ([], [])
    for i in range(warmup + repeats):
        pair = (timed(fn), timed(baseline))
        if i >= warmup:
            for acc, t in zip(times, pair):
                acc.append(t)
    return statistics.median(times[0]), statistics.median(times[1])


def step(q, k, v, prepared, backward: bool):
    def run():
        if not backward:
            with torch.no_grad():
                attend(q, k, v, prepared)
            return
        for t in (q, k, v):
            t.grad = None
        attend(q, k, v, prepared).sum().backward()

    return run


def backends_for(kind: str, device: torch.device) -> list[tuple[str, bool]]:
    """(backend, with backward) pairs that can run this kind on this device."""
    out = [("sdpa", True), ("flex", device.type == "cuda")]
    if device.type == "cuda" and dispatch.flash_available() and masks.get_mask_kind(kind).block_diagonal:
        out.append(("flash", True))
    return out


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    results = []
    cases = [(S, kind) for S in args.seq_lens for kind in masks.mask_kinds() if kind != "causal"]
    for S, kind in progress(cases, desc="attention benchmark", unit="case"):
        g = torch.Generator(device="cpu").manual_seed(S)
        q, k, v = (
            torch.randn(args.batch, h, S, args.head_dim, generator=g).to(device, dtype).requires_grad_()
            for h in (args.heads, args.kv_heads, args.kv_heads)
        )
        meta = metadata(args.batch, S, device)
        plain = prepare(AttentionMask.build("causal", batch=args.batch, kv_len=S), "sdpa", device)
        mask = AttentionMask.build(kind, **meta)
        for backend, backward in backends_for(kind, device):
            t0 = time.perf_counter()
            prepared = prepare(mask, backend, device)
            prep_s = time.perf_counter() - t0
            seconds, base = paired_median_times(
                step(q, k, v, prepared, backward), step(q, k, v, plain, backward), args.warmup, args.repeats, device
            )
            results.append(
                dict(
                    seq_len=S,
                    kind=kind,
                    backend=backend,
                    mode="fwd+bwd" if backward else "fwd",
                    seconds=seconds,
                    prepare_seconds=prep_s,
                    causal_sdpa_seconds=base,
                    ratio_to_causal_sdpa=seconds / base,
                )
            )
    return dict(
        config=dict(vars(args), torch=torch.__version__, host=platform.machine(), threads=torch.get_num_threads()),
        results=results,
    )


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seq_lens = sorted({r["seq_len"] for r in report["results"]})
    fig, axes = plt.subplots(1, len(seq_lens), figsize=(6 * len(seq_lens), 4), squeeze=False)
    for ax, S in zip(axes[0], seq_lens):
        rows = [r for r in report["results"] if r["seq_len"] == S]
        series = sorted({(r["backend"], r["mode"]) for r in rows})
        kinds = list(dict.fromkeys(r["kind"] for r in rows))
        width = 0.8 / len(series)
        for i, (backend, mode) in enumerate(series):
            ratios = {r["kind"]: r["ratio_to_causal_sdpa"] for r in rows if (r["backend"], r["mode"]) == (backend, mode)}
            xs = [j + i * width for j, kind in enumerate(kinds) if kind in ratios]
            ax.bar(xs, [ratios[kind] for kind in kinds if kind in ratios], width, label=f"{backend} {mode}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(kinds))], kinds, rotation=30, ha="right")
        ax.set_ylabel("time / SDPA is_causal (same mode)")
        ax.set_title(f"seq {S}, {report['config']['device']}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument(
        "--flex-compile", choices=["0", "1"], default=None,
        help="torch.compile the Flex kernel (sets MEGACOMPRESS_FLEX_COMPILE; default: on for CUDA, off for CPU)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if args.flex_compile is not None:
        os.environ["MEGACOMPRESS_FLEX_COMPILE"] = args.flex_compile
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out)  # the config is stored in the JSON
    report = run(args)
    json_path = out / "attention.json"
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    plot(report, out / "attention.png")
    for r in report["results"]:
        print(
            f"S={r['seq_len']:5d} {r['kind']:17s} {r['backend']:5s} {r['mode']:7s} "
            f"{r['seconds'] * 1e3:8.2f} ms  x{r['ratio_to_causal_sdpa']:.2f}  (prepare {r['prepare_seconds'] * 1e3:.1f} ms)"
        )
    print(f"wrote {json_path} and attention.png")


if __name__ == "__main__":
    main()
