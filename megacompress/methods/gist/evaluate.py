"""Evaluating gist models: output quality and the cost of gist caching vs the full prompt.

Quality (`quality`): ROUGE-L F-measure with ``rouge_score`` (stemming on, as the paper),
x100, averaged over records, with its standard error; exact match (%, after stripping
whitespace); mean output and reference lengths in tokens; per record its output, ROUGE-L and
length, so two models scored on the same records can be compared pairwise
(`paired_interval`: a few dozen records leave ROUGE-L means uncertain by points).

Efficiency (`efficiency`), on the same records and model, greedy, a fixed number of new
tokens (no early stop, so both sides decode the same count):

* ``gist``: the input segment prefilled from the stored gist K/V, then decoding
  (`generate_cached`); ``full``: the whole prompt (instruction + gists + input) prefilled
  into a KV cache, then decoding (`generate_full`), which is what the pos-control model
  costs: with a dense SDPA mask FLOPs and time do not depend on which keys are masked.
* ``prefill_*`` counts one forward pass + the first token (``max_new_tokens=1``), ``total_*``
  prefill + all new tokens. FLOPs from ``torch.utils.flop_counter.FlopCounterMode`` with CPU
  attention counted (`megacompress.models.flops.flop_counter_mode`: dense, masked keys too);
  wall-clock = best of ``repeats`` runs, on this process's threads.
* KV bytes per stored prompt: the k gists' K/V vs the K/V of the instruction's tokens (the
  prefix without gists), all layers, the model's dtype.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from megacompress.methods.gist.generate import generate_cached, generate_full, serving_batches
from megacompress.models.flops import flop_counter_mode


def quality(predictions: list[str], references: list[str], prediction_tokens: list[int],
            reference_tokens: list[int]) -> dict:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    n = max(1, len(predictions))
    rouge = [100 * scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    stderr = statistics.stdev(rouge) / n ** 0.5 if n > 1 else None
    return {"records": len(predictions), "rouge_l": sum(rouge) / n, "rouge_l_stderr": stderr,
            "exact_match": 100 * sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / n,
            "mean_output_tokens": sum(prediction_tokens) / n, "mean_reference_tokens": sum(reference_tokens) / n,
            "per_record": [{"rouge_l": r, "output_tokens": t, "output": p}
                           for r, t, p in zip(rouge, prediction_tokens, predictions)]}


def paired_interval(a: list[float], b: list[float], *, samples: int = 10_000, level: float = 0.95,
                    seed: int = 0) -> dict:
    """Percentile bootstrap intervals of mean(a) / mean(b) and mean(a) - mean(b) over the same records.

    Records are resampled together (paired), so what both models find hard does not widen them.
    """
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"paired scores need the same records (>= 2): got {a.size} and {b.size}")
    rows = np.random.default_rng(seed).integers(0, a.size, size=(samples, a.size))
    mean_a, mean_b = a[rows].mean(axis=1), b[rows].mean(axis=1)
    q = [(1 - level) / 2, (1 + level) / 2]
    ratio = np.quantile(mean_a / np.maximum(mean_b, np.finfo(np.float64).tiny), q)
    return {"level": level, "ratio": [float(x) for x in ratio],
            "difference": [float(x) for x in np.quantile(mean_a - mean_b, q)]}


def measure(fn: Callable[[], object], repeats: int = 1, count: bool = True) -> tuple[int | None, float]:
    """(FLOPs of one call, or None without ``count``; best wall-clock seconds over ``repeats`` calls)."""
    flops = None
    if count:
        with flop_counter_mode() as counter:
            fn()
        flops = counter.get_total_flops()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return flops, best


def efficiency(model, fmt, records: list[dict], entries: list, max_new_tokens: int, *, batch_size: int | None = None,
               repeats: int = 1, count_total_flops: bool = True) -> dict:
    """Gist-cached vs full-prompt prefill and generation of ``records`` (module docstring), served
    in batches of ``batch_size`` (default: one batch) grouped by length as `answer` does;
    FLOPs and seconds are summed over the batches. ``count_total_flops=False`` skips counting
    prefill + generation (FlopCounterMode slows a decode loop down ~2.5x); its keys are then None."""
    formatted = [fmt.format(r["instruction"], r.get("input", "")) for r in records]
    size = batch_size or len(records)

    def gist(rows: list[int], n: int) -> Callable[[], object]:
        return lambda: generate_cached(model, [entries[i] for i in rows], [formatted[i].tokens[formatted[i].gist_end:]
                                                                         for i in rows], n)

    def full(rows: list[int], n: int) -> Callable[[], object]:
        return lambda: generate_full(model, [formatted[i].tokens for i in rows],
                                     [formatted[i].gist_start for i in rows], n)

    out = {"batch": size, "records": len(records), "max_new_tokens": max_new_tokens}
    with torch.inference_mode():
        for name, run in (("gist", gist), ("full", full)):
            sums = dict.fromkeys(("prefill_flops", "prefill_seconds", "total_flops", "total_seconds"), 0)
            for rows in serving_batches(formatted, size, cached=name == "gist"):
                flops, seconds = measure(run(rows, 1), repeats)
                sums["prefill_flops"] += flops
                sums["prefill_seconds"] += seconds
                flops, seconds = measure(run(rows, max_new_tokens), repeats, count=count_total_flops)
                sums["total_flops"] += flops or 0
                sums["total_seconds"] += seconds
            for key, value in sums.items():
                out[f"{key}_{name}"] = value if count_total_flops or key != "total_flops" else None
    per_token = entries[0].nbytes() // fmt.k
    instruction_tokens = [f.gist_start for f in formatted]
    out.update(
        mean_instruction_tokens=sum(instruction_tokens) / len(formatted),
        kv_bytes_gist=entries[0].nbytes(), kv_bytes_full=per_token * sum(instruction_tokens) / len(formatted),
        prefill_flops_ratio=out["prefill_flops_gist"] / out["prefill_flops_full"],
        total_flops_ratio=out["total_flops_gist"] / out["total_flops_full"] if count_total_flops else None,
        wallclock_ratio=out["total_seconds_gist"] / out["total_seconds_full"],
        prefill_wallclock_ratio=out["prefill_seconds_gist"] / out["prefill_seconds_full"])
    out["compression_factor"] = out["mean_instruction_tokens"] / fmt.k
    out["kv_bytes_ratio"] = out["kv_bytes_full"] / out["kv_bytes_gist"]
    return out


@torch.no_grad()
def bits_per_byte(model, tokenizer, text: str, window: int = 512) -> dict:
    """Import check: (tokens / bytes) x mean NLL / ln 2 of ``text`` in non-overlapping windows
    (each window starts without context, so this slightly overestimates the model's loss)."""
    import math

    ids = tokenizer.encode(text)
    total, count = 0.0, 0
    window = min(window, model.config.max_seq_len)
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[start:start + window + 1]])
        if chunk.shape[1] < 2:
            break
        chunk = chunk.to(model.output_weight.device)
        out = model(chunk[:, :-1], labels=chunk[:, 1:])
        total, count = total + float(out.loss_sum), count + int(out.num_labels)
    nbytes = len(text.encode("utf-8"))
    return {"bytes": nbytes, "tokens": len(ids), "bits_per_byte": total / math.log(2) / nbytes * len(ids) / count,
            "nll_per_token": total / count}
