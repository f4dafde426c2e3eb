"""GPTHF-8-4 generation vs Baseline-12 (random weights, fp32), every algorithm in the same code path.

    .venv/bin/python benchmarks/gpthf_generation.py [--quick] [--out FILE.json]

Algorithms (megacompress.generation): GPTHF fast (`gpthf.generate_fast`: encoder cache of the
current sentence, body cache of one entry per finished sentence), the baseline with its KV cache
(`generate.generate`, the real opponent), the baseline without cache (`uncached.generate_uncached`)
and the public code's algorithm (`gpthf.generate_public_algorithm`: re-encode the current
sentence, rerun the body over all sentence embeddings, nothing cached).

Prompts are windows of real text from data/sample/train.jsonl starting at a sentence start,
split into sentences with an EOS after each (as `preprocess --split-sentences`); the new
tokens are *forced* to the text's continuation, so with random weights sentences still end
where real text's do, and every algorithm generates the same tokens.

Per (prompt, new, batch): tokens/s of a whole `generate` call (prefill included), FLOPs per
generated token (`FlopCounterMode` at batch 1, CPU attention counted, see
`models.flops.flop_counter_mode`; over the whole call up to ``--flops-full-steps`` new tokens,
else on sampled steps), KV-cache bytes per sequence at the end, peak memory
(CUDA: allocator peak; CPU: peak RSS growth during the call). Ratios are
baseline-with-KV-cache / GPTHF (> 1 = GPTHF better), plus speed-ups vs the uncached baseline
and the public algorithm. Those two cost far more per step; with more than
``--full-steps`` new tokens they are timed on sampled steps and interpolated over all steps
(``"sampled_steps"`` in the JSON says which).

Writes FILE.json (default benchmarks/results/gpthf_generation.json) and a PNG next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from megacompress.data.tokenizers import build_tokenizer
from megacompress.generation.generate import generate
from megacompress.methods.gpthf.generation import encode_prompt, generate_fast, generate_public_algorithm
from megacompress.generation.uncached import generate_uncached, teacher_forced_max_diff
from megacompress.models import ModelConfig, build_model
from megacompress.models.flops import flop_counter_mode

REPO = Path(__file__).resolve().parents[1]
PAIRS = [(100, 100), (100, 250), (250, 100), (250, 250), (20, 500), (500, 20)]
QUICK_PAIRS = [(500, 20), (20, 500)]


class PeakMemory:
    """Peak memory growth during a block: CUDA allocator peak, or RSS polled every 2 ms on CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.start)
            time.sleep(0.002)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start, self._stop = self._rss(), threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self._stop.set()
            self._thread.join()


def corpus_rows(tokenizer, batch: int, length: int) -> list[list[int]]:
    """``batch`` windows of ``length`` tokens of real text, each starting at a sentence start."""
    eos = tokenizer.special_id("eos")
    rows, lines = [], (REPO / "data" / "sample" / "train.jsonl").read_text().splitlines()
    for line in lines:
        ids = encode_prompt(tokenizer, json.loads(line)["text"], eos, ends_sentence=True)
        starts = [i + 1 for i, t in enumerate(ids) if t == eos]
        for s in starts[::8]:  # spread the windows over the document
            if s + length <= len(ids):
                rows.append(ids[s:s + length])
            if len(rows) == batch:
                return rows
    raise ValueError(f"data/sample/train.jsonl has too few {length}-token windows for batch {batch}")


def timed(fn, *args, device, **kwargs):
    """(seconds, output, peak memory bytes) of one call."""
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, out, memory.peak


def offsets_for(new: int, samples: int, k: int) -> list[int]:
    """Sampled step offsets t in 0 .. new-1-k, both ends included (t = 0 is the call from the prompt)."""
    return sorted({int(t) for t in np.linspace(0, new - k - 1, samples)})


def sampled_seconds(fn, model, prompts, forced, new, samples, *, device, steps_per_sample=4,
                    **kwargs) -> tuple[float, list[int]]:
    """Seconds of a whole call, from per-step costs measured at ``samples`` offsets t and
    interpolated linearly over t = 1..new-1. At t a call continues from prompt + forced[:t]:
    for the uncached baseline (``steps_per_sample=0``) its one forward *is* the step; otherwise
    it emits 1 + k tokens and its k decode steps are timed (`GenerationOutput.step_seconds`).
    The call at t = 0 also gives the prefill and first token (its time minus its steps)."""
    k = steps_per_sample
    first, costs = 0.0, []
    offsets = offsets_for(new, samples, k)
    for t in offsets:
        grown = [p + f for p, f in zip(prompts, forced[:, :t].tolist())]
        seconds, out, _ = timed(fn, model, grown, 1 + k, forced_tokens=forced[:, t:t + 1 + k], device=device,
                                **kwargs)
        if t == 0:
            first = seconds - sum(out.step_seconds)
        costs.append(float(np.mean(out.step_seconds)) if k else seconds)
    return first + float(np.interp(np.arange(1, new), offsets, costs).sum()), offsets


def counted_flops(fn, model, prompt, forced, new, **kwargs) -> float:
    """`FlopCounterMode` total of one batch-1 call of ``new`` tokens (forced[0] continues the prompt)."""
    with flop_counter_mode() as counter:
        fn(model, [prompt], new, forced_tokens=forced[:1, :new], **kwargs)
    return counter.get_total_flops()


def flops_per_token(fn, model, prompt, forced, new, full_steps, samples, k=4, **kwargs) -> tuple[float, list | None]:
    """(FLOPs per generated token at batch 1, sampled offsets or None). Up to ``full_steps`` new
    tokens the whole call is counted; beyond, the first call (prefill + first token) plus the k
    steps after each sampled offset (the difference of the counted calls for 1 + k and 1 tokens
    from prompt + forced[:t]: exact for those steps), interpolated over t = 1..new-1."""
    if new <= full_steps:
        return counted_flops(fn, model, prompt, forced, new, **kwargs) / new, None
    offsets, costs, first = offsets_for(new, samples, k), [], 0.0
    for t in offsets:
        grown, rest = prompt + forced[0, :t].tolist(), forced[:, t:]
        one = counted_flops(fn, model, grown, rest, 1, **kwargs)
        first = one if t == 0 else first
        costs.append((counted_flops(fn, model, grown, rest, 1 + k, **kwargs) - one) / k)
    return (first + float(np.interp(np.arange(1, new), offsets, costs).sum())) / new, offsets


def run_pair(models, tokenizer, prompt_len: int, new: int, batch: int, args, device, flops_cache: dict) -> dict:
    eos = tokenizer.special_id("eos")
    rows = corpus_rows(tokenizer, batch, prompt_len + new)
    prompts, forced = [r[:prompt_len] for r in rows], torch.tensor([r[prompt_len:] for r in rows])
    gpthf, gpt = models["gpthf"], models["gpt"]
    result = {"prompt": prompt_len, "new": new, "batch": batch,
              "mean_sentence_tokens": round(len(sum(rows, [])) / max(1, sum(r.count(eos) for r in rows)), 1)}
    seconds = {}
    for name, fn, model, extra in (("gpthf_fast", generate_fast, gpthf, dict(eos_id=eos)),
                                   ("baseline_cached", generate, gpt, {})):
        seconds[name], out, result[f"{name}_peak_memory_bytes"] = timed(fn, model, prompts, new, forced_tokens=forced,
                                                                       device=device, **extra)
        result[f"{name}_kv_bytes_per_sequence"] = out.kv_cache_bytes / batch
        key = (name, prompt_len, new)  # batch 1's first row is every batch's first row
        if key not in flops_cache:
            flops_cache[key] = flops_per_token(fn, model, prompts[0], forced, new, args.flops_full_steps,
                                               args.flops_samples, **extra)
        result[f"{name}_flops_per_token"], sampled = flops_cache[key]
        if sampled:
            result[f"{name}_flops_sampled_steps"] = sampled
        print(f"  {name:18s} {batch * new / seconds[name]:9.1f} tokens/s ({seconds[name]:.1f} s)", flush=True)
    for name, fn, model, extra in (("baseline_uncached", generate_uncached, gpt, dict(steps_per_sample=0)),
                                   ("public_algorithm", generate_public_algorithm, gpthf, dict(eos_id=eos))):
        if new <= (args.public_full_steps if name == "public_algorithm" else args.full_steps):
            extra.pop("steps_per_sample", None)
            seconds[name] = timed(fn, model, prompts, new, forced_tokens=forced, device=device, **extra)[0]
        else:
            seconds[name], result[f"{name}_sampled_steps"] = sampled_seconds(
                fn, model, prompts, forced, new, args.samples, device=device, **extra)
        sampled = ", sampled steps" if f"{name}_sampled_steps" in result else ""
        print(f"  {name:18s} {batch * new / seconds[name]:9.1f} tokens/s ({seconds[name]:.1f} s{sampled})", flush=True)
    for name, s in seconds.items():
        result[f"{name}_tokens_per_s"] = batch * new / s
    fast = result["gpthf_fast_tokens_per_s"]
    result.update(
        speedup_vs_cached=fast / result["baseline_cached_tokens_per_s"],
        speedup_vs_uncached=fast / result["baseline_uncached_tokens_per_s"],
        speedup_vs_public_algorithm=fast / result["public_algorithm_tokens_per_s"],
        flops_ratio=result["baseline_cached_flops_per_token"] / result["gpthf_fast_flops_per_token"],
        kv_bytes_ratio=result["baseline_cached_kv_bytes_per_sequence"] / result["gpthf_fast_kv_bytes_per_sequence"],
        memory_ratio=result["baseline_cached_peak_memory_bytes"] / max(1, result["gpthf_fast_peak_memory_bytes"]))
    print("  ratios: " + ", ".join(f"{k} {result[k]:.2f}" for k in (
        "speedup_vs_cached", "speedup_vs_uncached", "speedup_vs_public_algorithm", "flops_ratio", "kv_bytes_ratio",
        "memory_ratio")), flush=True)
    return result


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["speedup_vs_cached", "speedup_vs_uncached", "speedup_vs_public_algorithm", "flops_ratio", "kv_bytes_ratio"]
    labels = [f"({r['prompt']},{r['new']})\nb{r['batch']}" for r in results]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(results)), 4))
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        ax.bar(np.arange(len(results)) + i * width, [r[key] for r in results], width, label=key)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(results)) + 0.4, labels)
    ax.set_ylabel("baseline / GPTHF fast (> 1: GPTHF better)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="(500,20) and (20,500) at batch 32 only")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpthf_generation.json"))
    parser.add_argument("--gpthf-preset", default="gpthf-8-4")
    parser.add_argument("--baseline-preset", default="baseline-12")
    parser.add_argument("--batch", type=int, nargs="*", default=None, help="batch sizes (default 1 32; quick: 32)")
    parser.add_argument("--pairs", nargs="*", default=None, metavar="PROMPT,NEW",
                        help="other (prompt, new) pairs, e.g. for a smoke run with small presets")
    parser.add_argument("--full-steps", type=int, default=8,
                        help="time the uncached algorithms on every step up to this many new tokens (default 8)")
    parser.add_argument("--public-full-steps", type=int, default=32,
                        help="the same for the public algorithm (default 32: its prefill costs about as much as "
                             "its steps, and sampling a step costs two prefills)")
    parser.add_argument("--samples", type=int, default=None,
                        help="sampled offsets otherwise (default 3; quick 2: an uncached step's cost is linear in "
                             "the sequence length, so the two ends fix it)")
    parser.add_argument("--flops-full-steps", type=int, default=100,
                        help="count FLOPs over the whole batch-1 call up to this many new tokens (default 100; "
                             "FlopCounterMode makes a 500-token call 2.4x slower); beyond, on sampled steps")
    parser.add_argument("--flops-samples", type=int, default=6, help="sampled offsets for FLOPs (default 6)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.samples = args.samples or (2 if args.quick else 3)
    device = torch.device(args.device)
    pairs = QUICK_PAIRS if args.quick else PAIRS
    if args.pairs:
        pairs = [tuple(int(v) for v in pair.split(",")) for pair in args.pairs]
    batches = args.batch or ([32] if args.quick else [1, 32])
    tokenizer = build_tokenizer("gpt2")
    # (500, 20) needs 520 positions; RoPE has no position table, so only the length check moves.
    length = max(max(p + n for p, n in pairs), ModelConfig.from_preset(args.gpthf_preset).max_seq_len)
    models = {name: build_model(ModelConfig.from_preset(preset, max_seq_len=length), seed=0).to(device).eval()
              for name, preset in (("gpthf", args.gpthf_preset), ("gpt", args.baseline_preset))}
    start = time.time()
    results, flops_cache = [], {}
    with torch.inference_mode():
        for batch in batches:
            for prompt_len, new in pairs:
                print(f"(prompt {prompt_len}, new {new}, batch {batch})", flush=True)
                results.append(run_pair(models, tokenizer, prompt_len, new, batch, args, device, flops_cache))
        eos = tokenizer.special_id("eos")
        rows = corpus_rows(tokenizer, 4, 120)
        prompts = [r[:100] for r in rows]
        out = generate_fast(models["gpthf"], prompts, 20, eos_id=eos, return_logits=True,
                            forced_tokens=torch.tensor([r[100:] for r in rows]))
        diff = teacher_forced_max_diff(models["gpthf"], prompts, out, eos)
    record = {"gpthf": args.gpthf_preset, "baseline": args.baseline_preset, "device": str(device),
              "threads": args.threads, "dtype": "float32", "weights": "random (seed 0)", "quick": args.quick,
              "pairs": results, "max_abs_logit_diff_fast_vs_teacher_forced": diff,
              "notes": ["tokens/s: whole generate call, prefill included; new tokens forced to the corpus continuation",
                        "flops: FlopCounterMode over a whole call at batch 1, divided by new tokens; with "
                        "*_flops_sampled_steps: the first call plus 4 counted steps after each of those offsets, "
                        "interpolated over all steps",
                        "baseline_uncached / public_algorithm with *_sampled_steps: per-step costs measured at those "
                        "offsets and interpolated over all steps",
                        "every algorithm's prefill runs the LM head at the last prompt position only"],
              "seconds": round(time.time() - start, 1)}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(record, indent=2) + "\n")
    plot(results, out_path.with_suffix(".png"))
    print(f"max |fast - teacher-forced| logit: {diff:.2e}; wrote {out_path} and {out_path.with_suffix('.png')} "
          f"in {record['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
