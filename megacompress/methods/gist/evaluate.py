"""Evaluating gist models: output quality and the cost of gist caching vs the full prompt.

Quality (`quality`): ROUGE-L F-measure with ``rouge_score`` (stemming on, as the paper),
x100, averaged over records, with its standard error; exact match (%, after stripping
whitespace); mean output and reference lengths in tokens; per record its output, ROUGE-L and
length, so two models scored on the same records can be compared pairwise
(`paired_interval`: a few dozen records leave ROUGE-L means uncertain by points).

Several splits and models (`score` each, `comparison_table`, `plot_table`): one table of ROUGE-L
per split and model, with a reference model's ratio to and difference from each other model
and their paired bootstrap intervals; written as JSON and a PNG bar chart by ``gist evaluate``.

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

from megacompress.methods.gist.generate import fit_records, generate_cached, generate_full, serving_batches
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
    formatted, budgets, _ = fit_records(model, fmt, records, max_new_tokens)  # long records fitted as served
    max_new_tokens = min(budgets)
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


def score(model, fmt, tokenizer, records: list[dict], max_new_tokens: int, *, batch_size: int = 8,
          show_progress: bool = False) -> tuple[dict, dict | None]:
    """(`quality` of the greedy answers to ``records`` + ``truncation``: the counts of
    `generate.fit_records`, the gist cache it used or None). A ``gist`` model answers from
    in-memory gist caches, a control over the full prompt (its own mask)."""
    from megacompress.methods.gist import cache as gist_cache
    from megacompress.methods.gist.generate import answer

    instructions = list(dict.fromkeys(r["instruction"] for r in records))
    cached = model.config.gist_variant == "gist"
    cache = dict(zip(instructions, gist_cache.compress(model, fmt, instructions, batch_size))) if cached else None
    counts: dict = {}
    outputs = answer(model, fmt, records, max_new_tokens, cache=cache, batch_size=batch_size,
                     show_progress=show_progress, counts=counts)
    references = [r["output"] for r in records]
    report = quality([tokenizer.decode(o).strip() for o in outputs], references, [len(o) for o in outputs],
                     [len(tokenizer.encode_continuation(" " + r)) for r in references])
    report["truncation"] = counts
    return report, cache


def comparison_table(results: dict[str, dict[str, dict]], reference: str) -> tuple[dict, list[dict]]:
    """``results[model][split]`` (`score` reports) -> (per split the paired comparisons of
    ``reference`` vs every other model, the table: one row per split and model).

    A row holds the model's ROUGE-L (standard error), exact match, records, truncated inputs and,
    for a model other than the reference, ``ratio`` = reference / model and ``difference`` =
    reference - model of the mean ROUGE-L with their paired 95% bootstrap intervals
    (`paired_interval` over the split's records; None below 2 records)."""
    splits = list(next(iter(results.values())))
    comparisons: dict[str, dict] = {split: {} for split in splits}
    rows = []
    for split in splits:
        base = results[reference][split]
        base_scores = [r["rouge_l"] for r in base["per_record"]]
        for name, by_split in results.items():
            report = by_split[split]
            row = {"split": split, "model": name, "records": report["records"], "rouge_l": report["rouge_l"],
                   "rouge_l_stderr": report["rouge_l_stderr"], "exact_match": report["exact_match"],
                   "input_truncated": report.get("truncation", {}).get("input_truncated", 0),
                   "ratio": None, "ratio_ci95": None, "difference": None, "difference_ci95": None}
            if name != reference:
                scores = [r["rouge_l"] for r in report["per_record"]]
                row["ratio"] = base["rouge_l"] / report["rouge_l"] if report["rouge_l"] else None
                row["difference"] = base["rouge_l"] - report["rouge_l"]
                if len(scores) >= 2:
                    interval = paired_interval(base_scores, scores)
                    row["ratio_ci95"], row["difference_ci95"] = interval["ratio"], interval["difference"]
                comparisons[split][f"{reference}_vs_{name}"] = {
                    key: row[key] for key in ("ratio", "ratio_ci95", "difference", "difference_ci95")}
            rows.append(row)
    return comparisons, rows


def plot_table(rows: list[dict], reference: str, path) -> None:
    """Bar chart of the table (`comparison_table`): ROUGE-L per split (groups) and model (bars), standard
    errors as error bars, each non-reference bar labelled with reference / model and its interval.
    Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from megacompress.atomic import atomic_write

    splits = list(dict.fromkeys(r["split"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(splits) * len(models) ** 0.5 + 2), 4))
    for j, model in enumerate(models):
        mine = {r["split"]: r for r in rows if r["model"] == model}
        xs = [i + j * width for i in range(len(splits))]
        heights = [mine[s]["rouge_l"] for s in splits]
        ax.bar(xs, heights, width, label=model, yerr=[mine[s]["rouge_l_stderr"] or 0 for s in splits], capsize=3)
        for x, s in zip(xs, splits):
            row = mine[s]
            key = "ratio" if row["ratio"] is not None else "difference"  # no ratio to a zero score
            if row[key] is not None:
                ci = row[f"{key}_ci95"]
                text = ("" if key == "ratio" else "diff ") + f"{row[key]:.2f}" + (
                    f"\n[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
                ax.annotate(text, (x, row["rouge_l"]), ha="center", va="bottom", fontsize=6,
                            xytext=(0, 8), textcoords="offset points")
    ax.set_xticks([i + (len(models) - 1) * width / 2 for i in range(len(splits))],
                  [f"{s}\n({next(r['records'] for r in rows if r['split'] == s)} records)" for s in splits])
    ax.set_ylim(0, max(1.0, ax.get_ylim()[1] * 1.15))
    ax.set_ylabel("ROUGE-L (x100)")
    ax.set_title(f"ROUGE-L per split (labels: {reference} / model, else {reference} - model; paired 95% "
                 "interval)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
