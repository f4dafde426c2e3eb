"""GPU check: attention backends against dense SDPA, Baseline-12 training throughput, decode steps.

One script for one H100/H200 (under 8 minutes with the defaults) that writes
``gpu_check.json`` (and ``gpu_check.png``) to ``--out`` (default ``benchmarks/results``):

* ``attention``: forward and backward (gradients of q, k, v) of every mask kind in
  ``masks.mask_kinds()`` with ``flex`` and, for block-diagonal kinds when flash-attn is
  importable, ``flash``, against dense-mask ``sdpa`` in bf16. The reference is dense SDPA
  in float32 on the same bf16 inputs; bf16 SDPA's own error against it is the yardstick:
  a backend passes when its max abs diff <= 2 x SDPA-bf16's + ``ATOL_REL`` x max |reference|.
  Also the forward+backward time of each backend.
* ``training``: one Baseline-12 bf16 training step (model in bf16, torch AdamW) per
  attention backend on packed documents (document-causal mask): tokens/s and MFU; on CUDA
  also each backend with compiled blocks (``parallel.compile``), alone and with full
  recompute (``parallel.recompute=full``).
* ``decode``: prefill then one-token steps with the KV cache: ms per step at a few
  context lengths per backend, and the number of graphs torch compiled during the loop
  (decode steps must not recompile per step).

An exception in one backend is recorded in the JSON (``"error"``) and the check goes on;
each section has a share of ``--time-limit`` and records what it skipped for time.
Exit code: 0 all checks ran and passed, 1 a check failed or was skipped for time, 2 no CUDA
device (nothing written)::

    python benchmarks/gpu_check.py                 # on a GPU node, ~5-8 min
    python benchmarks/gpu_check.py --quick         # smaller shapes, ~2-4 min
    python benchmarks/gpu_check.py --device cpu    # development only: tiny shapes, float32, not a result
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import platform
import statistics
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from attention import backends_for  # benchmarks/attention.py (this script's directory is on sys.path)
from megacompress.atomic import atomic_write, write_text_atomic
from megacompress.attention import masks
from megacompress.attention.dispatch import AttentionMask, attend, prepare
from megacompress.models.config import ModelConfig
from megacompress.models.flops import flops_per_token
from megacompress.models.gpt import GPT
from megacompress.training.compile import apply_compile
from megacompress.training.metrics import peak_flops
from megacompress.training.recompute import apply_recompute

NO_CUDA = ("error: gpu_check needs a CUDA device (torch.cuda.is_available() is False); run it on a GPU node: "
           "python benchmarks/gpu_check.py  (development only: --device cpu runs tiny shapes on CPU)")
ATOL_REL = 1e-3  # tolerance slack, relative to the largest reference magnitude
SECTIONS = ("attention", "training", "decode")
SHARES = {"attention": 0.45, "training": 0.30, "decode": 0.25}  # of --time-limit, unused time rolls over
# Decode runs whose steps must not recompile: "auto" is what generation uses; explicit
# "flex" is reported as a diagnostic (static-shape compiles are keyed on the key length).
DECODE_BACKENDS = ("auto", "sdpa", "flex")
RECOMPILE_FREE_REQUIRED = ("auto", "sdpa")
DECODE_WARMUP_STEPS = 2  # the first step changes q_len (prefill -> 1): one compile there is fine


@dataclass(frozen=True)
class Plan:
    """Shapes and repeat counts of one run."""

    attention_shape: tuple[int, int, int, int]  # B, H, S, D
    repeats: int
    preset: str
    train_batch: int
    train_seq: int
    train_warmup: int
    train_steps: int
    decode_batch: int
    decode_prompts: tuple[int, ...]
    decode_steps: int


PLANS = {
    "full": Plan((4, 12, 2048, 64), 5, "baseline-12", 8, 512, 2, 5, 8, (128, 448), 64),
    "quick": Plan((4, 12, 1024, 64), 3, "baseline-12", 8, 512, 1, 3, 8, (128,), 32),
    "cpu": Plan((2, 2, 64, 16), 1, "tiny", 2, 64, 1, 1, 2, (16,), 4),  # development only
}


# ---------------------------------------------------------------- helpers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(fn, device: torch.device):
    """(milliseconds, result) of one call of ``fn``, with the device synchronised around it."""
    synchronize(device)
    t0 = time.perf_counter()
    result = fn()
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3, result


def median_ms(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed_ms(fn, device)[0] for _ in range(repeats))


def guarded(fn, *args) -> dict:
    """``fn(*args)`` (a record dict); an exception becomes ``{"error": ...}`` so the check goes on."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - one broken backend must not end the check
        traceback.print_exc()  # the JSON keeps the message; the log keeps where it came from
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"error": f"{type(exc).__name__}: {exc}"[:4000]}


class Deadline:
    def __init__(self, at: float):
        self.at = at

    def left(self) -> float:
        return self.at - time.monotonic()

    def passed(self) -> bool:
        return self.left() <= 0


TIME_SKIP = {"skipped": "section time limit reached"}


class _LimitHits(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.hits = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "recompile_limit" in record.getMessage() or "cache_size_limit" in record.getMessage():
            self.hits += 1


@contextmanager
def compile_counter():
    """Yields a dict that, after the block, holds ``graphs`` (graphs dynamo compiled inside it)
    and ``limit_hits`` (times dynamo gave up recompiling and fell back to eager)."""
    from torch._dynamo.utils import counters

    logger = logging.getLogger("torch._dynamo.convert_frame")
    handler = _LimitHits()
    logger.addHandler(handler)
    before = counters["stats"]["unique_graphs"]
    result = {"graphs": 0, "limit_hits": 0}
    try:
        yield result
    finally:
        logger.removeHandler(handler)
        result.update(graphs=counters["stats"]["unique_graphs"] - before, limit_hits=handler.hits)


def realistic_metadata(B: int, S: int, seed: int = 0) -> dict:
    """CPU ``[B, S]`` batch metadata: per row 3-5 documents of random lengths then 0-15% padding,
    a sentence end about every 20 tokens and at every document end, 1-4 gists inside the first document."""
    g = torch.Generator().manual_seed(seed)
    doc = torch.full((B, S), -1, dtype=torch.long)
    gist_start = torch.empty(B, dtype=torch.long)
    gist_end = torch.empty(B, dtype=torch.long)
    for b in range(B):
        real = S - (b * S) // (7 * B)
        weights = torch.rand(3 + b % 3, generator=g) + 0.5
        lengths = (weights / weights.sum() * real).long()
        lengths[-1] += real - lengths.sum()
        doc[b, :real] = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        gist_start[b] = lengths[0] // 4
        gist_end[b] = gist_start[b] + max(1, min(4, int(lengths[0]) // 4))
    ends = torch.zeros(B, S, dtype=torch.bool)
    ends[:, :-1] = doc[:, :-1] != doc[:, 1:]
    eos = ((torch.rand(B, S, generator=g) < 1 / 20) | ends) & (doc >= 0)
    return dict(document_ids=doc, eos_mask=eos, gist_start=gist_start, gist_end=gist_end)


def training_batch(B: int, S: int, vocab: int, device: torch.device) -> dict:
    """Packed documents (layout of `realistic_metadata`): positions restart per document,
    no loss across document ends or on padding."""
    doc = realistic_metadata(B, S, seed=1)["document_ids"]
    ids = torch.randint(0, vocab, (B, S), generator=torch.Generator().manual_seed(1))
    index = torch.arange(S).expand(B, S)
    starts = torch.ones(B, S, dtype=torch.bool)
    starts[:, 1:] = doc[:, 1:] != doc[:, :-1]
    position_ids = index - torch.where(starts, index, 0).cummax(dim=1).values
    labels = torch.full_like(ids, -100)
    same = (doc[:, 1:] == doc[:, :-1]) & (doc[:, :-1] >= 0)
    labels[:, :-1] = torch.where(same, ids[:, 1:], -100)
    batch = dict(input_ids=ids, position_ids=position_ids, document_ids=doc, labels=labels)
    return {k: v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------- attention


def forward_backward(q, k, v, dout, prepared, backward: bool) -> dict:
    """Output and (with ``backward``) gradients of ``<attend(q, k, v), dout>`` w.r.t. q, k, v."""
    if not backward:
        with torch.no_grad():
            return {"out": attend(q, k, v, prepared)}
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = attend(q, k, v, prepared)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    return {"out": out.detach(), "dq": dq, "dk": dk, "dv": dv}


def max_abs_diffs(got: dict, ref: dict) -> dict:
    return {name: (got[name].float() - ref[name]).abs().max().item() for name in got}


def run_backend(backend: str, backward: bool, mask: AttentionMask, inputs: tuple, plan: Plan,
                device: torch.device, dtype: torch.dtype, ref: dict) -> dict:
    prepared = prepare(mask, backend, device, dtype)
    with compile_counter() as compiled:  # the first call compiles (flex on CUDA)
        first_ms, got = timed_ms(lambda: forward_backward(*inputs, prepared, backward), device)
    record = {"max_abs_diff": max_abs_diffs(got, ref), "first_call_ms": first_ms, "graphs_compiled": compiled["graphs"]}
    record["fwd_bwd_ms" if backward else "fwd_ms"] = median_ms(
        lambda: forward_backward(*inputs, prepared, backward), device, plan.repeats)
    if not backward:
        record["backward"] = "skipped: torch has no Flex backward on CPU"
    return record


def judge(records: dict, ref: dict) -> None:
    """Add ``tolerance`` and ``passed`` to every non-SDPA record: diff <= 2 x SDPA's + ATOL_REL x max|ref|."""
    sdpa = records.get("sdpa", {}).get("max_abs_diff")
    for backend, record in records.items():
        if backend == "sdpa" or "max_abs_diff" not in record:
            continue
        if sdpa is None:
            record.update(passed=False, note="no bf16 SDPA result to compare with")
            continue
        tolerance = {n: 2 * sdpa[n] + ATOL_REL * ref[n].abs().max().item() for n in record["max_abs_diff"]}
        record["tolerance"] = tolerance
        record["passed"] = all(record["max_abs_diff"][n] <= tolerance[n] for n in tolerance)


def check_kind(kind: str, meta: dict, plan: Plan, device: torch.device, dtype: torch.dtype, deadline: Deadline) -> dict:
    B, H, S, D = plan.attention_shape
    g = torch.Generator().manual_seed(len(kind))
    q, k, v, dout = (torch.randn(B, H, S, D, generator=g).to(device, dtype) for _ in range(4))
    mask = (AttentionMask.build("causal", batch=B, kv_len=S) if kind == "causal"
            else AttentionMask.build(kind, **meta))
    # fp32 reference from the same (bf16-rounded) inputs: only the kernels' own error remains.
    ref = forward_backward(q.float(), k.float(), v.float(), dout.float(), prepare(mask, "sdpa", device), True)
    records = {}
    for backend, backward in backends_for(kind, device):
        records[backend] = TIME_SKIP if deadline.passed() else guarded(
            run_backend, backend, backward, mask, (q, k, v, dout), plan, device, dtype, ref)
    judge(records, ref)
    return {"kind": kind, "backends": records}


def attention_section(plan: Plan, device: torch.device, dtype: torch.dtype, deadline: Deadline) -> dict:
    B, H, S, D = plan.attention_shape
    meta = {k: t.to(device) for k, t in realistic_metadata(B, S).items()}
    rows = []
    # One clean compile cache for the section: the kinds need ~5 Flex graphs, under torch's
    # recompile limit of 8 (resetting per kind would compile kinds that share a mask function twice).
    torch._dynamo.reset()
    for kind in masks.mask_kinds():
        row = TIME_SKIP if deadline.passed() else guarded(check_kind, kind, meta, plan, device, dtype, deadline)
        rows.append(row if "backends" in row else {"kind": kind, **row})
    failures = [f"{r['kind']}: {name}: {rec.get('error', 'max abs diff over tolerance')}"
                for r in rows for name, rec in r.get("backends", {"-": r}).items()
                if "error" in rec or rec.get("passed") is False]
    return dict(config=dict(batch=B, heads=H, seq_len=S, head_dim=D, dtype=str(dtype),
                            reference="dense-mask SDPA in float32 on the same bf16-rounded inputs",
                            tolerance=f"max abs diff <= 2 x (bf16 SDPA vs reference) + {ATOL_REL} x max|reference|"),
                results=rows, failures=failures, passed=not failures)


# ---------------------------------------------------------------- training


# Variants of every training backend: (name suffix, parallel.compile, parallel.recompute).
VARIANTS = (("", False, "none"), ("+compile", True, "none"), ("+compile+recompute", True, "full"))


def train_backend(backend: str, plan: Plan, device: torch.device, dtype: torch.dtype, compiled: bool = False,
                  recompute: str = "none") -> dict:
    config = ModelConfig.from_preset(plan.preset, attention_backend=backend)
    model = GPT(config, seed=0).to(device=device, dtype=dtype)
    apply_compile(model, compiled)
    apply_recompute(model, recompute)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01,
                            fused=True)  # the trainer's default optimizer.implementation
    batch = training_batch(plan.train_batch, plan.train_seq, config.vocab_size, device)

    def step() -> torch.Tensor:
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first_ms, _ = timed_ms(step, device)  # includes compiling (flex, parallel.compile)
    for _ in range(plan.train_warmup - 1):
        step()
    elapsed_ms, losses = timed_ms(lambda: [step() for _ in range(plan.train_steps)], device)
    tokens_per_s = plan.train_steps * plan.train_batch * plan.train_seq / (elapsed_ms / 1e3)
    flops = flops_per_token(config, plan.train_seq)
    peak = peak_flops() if device.type == "cuda" else None
    loss = losses[-1].item()
    return dict(first_step_ms=first_ms, step_ms=elapsed_ms / plan.train_steps, tokens_per_s=tokens_per_s,
                flops_per_token=flops, mfu=None if peak is None else flops * tokens_per_s / peak, loss=loss,
                passed=math.isfinite(loss),
                peak_memory_gb=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None)


def training_section(plan: Plan, device: torch.device, dtype: torch.dtype, deadline: Deadline) -> dict:
    results = {}
    for suffix, compiled, recompute in VARIANTS:  # every backend's plain step first: the variants may run out of time
        for backend, backward in backends_for("document_causal", device):
            name = backend + suffix
            torch._dynamo.reset()
            if not backward:
                results[name] = {"skipped": "torch has no Flex backward on CPU"}
            elif compiled and device.type != "cuda":
                results[name] = {"skipped": "CUDA only (CPU compile: benchmarks/compile.py)"}
            else:
                results[name] = TIME_SKIP if deadline.passed() else guarded(train_backend, backend, plan, device,
                                                                             dtype, compiled, recompute)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    failures = [f"{b}: {r.get('error', 'non-finite loss')}" for b, r in results.items()
                if "error" in r or r.get("passed") is False]
    return dict(config=dict(preset=plan.preset, batch=plan.train_batch, seq_len=plan.train_seq, dtype=str(dtype),
                            mask="document_causal (packed documents with padding)", warmup_steps=plan.train_warmup,
                            timed_steps=plan.train_steps, peak_flops=peak_flops() if device.type == "cuda" else None,
                            mfu="flops_per_token(config, seq_len) x tokens/s / peak bf16 FLOP/s (dense-attention "
                                "convention); tokens/s counts every position, padding included"),
                results=results, failures=failures, passed=not failures)


# ---------------------------------------------------------------- decode


def decode_run(model: GPT, prompt_len: int, plan: Plan, device: torch.device, deadline: Deadline) -> dict:
    B, vocab = plan.decode_batch, model.config.vocab_size
    ids = torch.randint(0, vocab, (B, prompt_len), generator=torch.Generator().manual_seed(prompt_len)).to(device)
    positions = torch.arange(prompt_len, device=device).expand(B, prompt_len)
    cache = model.new_kv_cache(B, prompt_len + plan.decode_steps)
    zeros = torch.zeros(B, dtype=torch.long, device=device)
    with torch.no_grad():
        prefill_ms, logits = timed_ms(lambda: model(ids, positions, torch.zeros_like(ids), kv_cache=cache).logits,
                                      device)
        step_ms, graphs, limit_hits = [], [], 0
        for i in range(plan.decode_steps):
            if deadline.passed():
                break
            token = logits[:, -1, :vocab].argmax(-1)
            pos = torch.full((B,), prompt_len + i, dtype=torch.long, device=device)
            with compile_counter() as compiled:
                ms, logits = timed_ms(lambda: model(token[:, None], pos[:, None], zeros[:, None],
                                                    kv_cache=cache).logits, device)
            step_ms.append(ms)
            graphs.append(compiled["graphs"])
            limit_hits += compiled["limit_hits"]
    later = step_ms[DECODE_WARMUP_STEPS:] or step_ms
    recompiles = sum(graphs[DECODE_WARMUP_STEPS:])
    return dict(prompt_len=prompt_len, steps_done=len(step_ms), truncated=len(step_ms) < plan.decode_steps,
                context=[prompt_len, prompt_len + len(step_ms)], prefill_ms=prefill_ms,
                mean_step_ms=statistics.fmean(later) if later else None,
                median_step_ms=statistics.median(later) if later else None,
                step_ms=[round(t, 3) for t in step_ms], graphs_compiled_per_step=graphs,
                recompiles_after_warmup=recompiles, recompile_limit_hits=limit_hits,
                recompile_free=recompiles == 0 and limit_hits == 0)


def decode_backend(backend: str, plan: Plan, device: torch.device, dtype: torch.dtype, deadline: Deadline,
                   runs_left: int) -> list[dict]:
    model = GPT(ModelConfig.from_preset(plan.preset, attention_backend=backend), seed=0)
    model = model.to(device=device, dtype=dtype).eval()
    runs = []
    for prompt_len in plan.decode_prompts:
        torch._dynamo.reset()  # count this run's compiles from a clean cache
        # An equal share of the section's remaining time, so a recompiling backend cannot starve the rest.
        share = Deadline(time.monotonic() + max(deadline.left(), 0) / runs_left)
        run = TIME_SKIP if deadline.passed() else guarded(decode_run, model, prompt_len, plan, device, share)
        runs.append({"backend": backend, "prompt_len": prompt_len, **run})
        runs_left -= 1
    return runs


def decode_section(plan: Plan, device: torch.device, dtype: torch.dtype, deadline: Deadline) -> dict:
    runs = []
    for i, backend in enumerate(DECODE_BACKENDS):
        runs_left = (len(DECODE_BACKENDS) - i) * len(plan.decode_prompts)
        result = guarded(decode_backend, backend, plan, device, dtype, deadline, runs_left)
        runs += result if isinstance(result, list) else [{"backend": backend, **result}]
    failures = [f"{r['backend']} prompt {r.get('prompt_len')}: "
                + r.get("error", f"{r.get('recompiles_after_warmup')} recompiles after warm-up")
                for r in runs if "error" in r
                or (r["backend"] in RECOMPILE_FREE_REQUIRED and r.get("recompile_free") is False)]
    return dict(config=dict(preset=plan.preset, batch=plan.decode_batch, prompt_lens=list(plan.decode_prompts),
                            steps=plan.decode_steps, dtype=str(dtype), warmup_steps=DECODE_WARMUP_STEPS,
                            rule=f"no graph compiled after the first {DECODE_WARMUP_STEPS} decode steps for "
                                 f"backends {list(RECOMPILE_FREE_REQUIRED)} ('flex' is reported, not required)",
                            note="flash-attn cannot express decode steps (queries after cached keys): not run"),
                results=runs, failures=failures, passed=not failures)


# ---------------------------------------------------------------- report


def machine_info(device: torch.device, debug: bool) -> dict:
    info = dict(host=platform.node(), machine=platform.machine(), python=platform.python_version(),
                torch=torch.__version__, cuda=torch.version.cuda, device=str(device), debug_cpu_run=debug)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gb=props.total_memory / 2**30, peak_bf16_flops=peak_flops())
    try:
        info["flash_attn"] = importlib.metadata.version("flash-attn")
    except importlib.metadata.PackageNotFoundError:
        info["flash_attn"] = None
    return info


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (attn, train, decode) = plt.subplots(1, 3, figsize=(18, 4.5))
    rows = report["sections"]["attention"].get("results", [])
    backends = sorted({b for r in rows for b in r.get("backends", {})})
    width = 0.8 / max(len(backends), 1)
    for i, backend in enumerate(backends):
        ms = [r.get("backends", {}).get(backend, {}) for r in rows]
        ms = [m.get("fwd_bwd_ms", m.get("fwd_ms", 0.0)) for m in ms]
        attn.bar([j + i * width for j in range(len(rows))], ms, width, label=backend)
    attn.set_xticks(range(len(rows)), [r["kind"] for r in rows], rotation=30, ha="right")
    attn.set_title("attention fwd+bwd (CPU flex: fwd only), ms")
    if backends:
        attn.legend(fontsize=8)

    results = report["sections"]["training"].get("results", {})
    ok = {b: r for b, r in results.items() if "tokens_per_s" in r}
    bars = train.bar(list(ok), [r["tokens_per_s"] for r in ok.values()])
    for bar, r in zip(bars, ok.values()):
        if r.get("mfu") is not None:
            train.annotate(f"MFU {r['mfu']:.1%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                           ha="center", va="bottom", fontsize=8)
    train.set_title(f"{report['sections']['training'].get('config', {}).get('preset')} training, tokens/s")

    runs = [r for r in report["sections"]["decode"].get("results", []) if r.get("mean_step_ms") is not None]
    labels = [f"{r['backend']}\nctx {r['context'][0]}-{r['context'][1]}" for r in runs]
    decode.bar(labels, [r["mean_step_ms"] for r in runs],
               color=["tab:red" if not r["recompile_free"] else "tab:blue" for r in runs])
    decode.set_title("decode step, mean ms (red: recompiled during the loop)")
    decode.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"gpu_check on {report['machine'].get('device_name', report['machine']['device'])}"
                 + (" (CPU debug run: not a result)" if report["machine"]["debug_cpu_run"] else ""))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def summary_lines(report: dict) -> list[str]:
    lines = []
    for row in report["sections"]["attention"].get("results", []):
        for backend, r in row.get("backends", {"-": row}).items():
            diff = " ".join(f"{n}={d:.1e}" for n, d in r.get("max_abs_diff", {}).items())
            ms = r.get("fwd_bwd_ms", r.get("fwd_ms"))
            lines.append(f"attention {row['kind']:17s} {backend:5s} "
                         + (f"{ms:8.2f} ms  max abs diff {diff}" if diff else r.get("error", r.get("skipped", "")))
                         + ("" if "passed" not in r else "  PASS" if r["passed"] else "  FAIL"))
    for backend, r in report["sections"]["training"].get("results", {}).items():
        mfu = "" if r.get("mfu") is None else f", MFU {r['mfu']:.1%}"
        lines.append(f"training  {backend:5s} " + (f"{r['tokens_per_s']:.0f} tokens/s{mfu}" if "tokens_per_s" in r
                                                 else r.get("error", r.get("skipped", ""))))
    for r in report["sections"]["decode"].get("results", []):
        lines.append(f"decode    {r['backend']:5s} prompt {r['prompt_len']:4d}: "
                     + (f"{r['mean_step_ms']:.2f} ms/step, {r['recompiles_after_warmup']} recompiles after warm-up"
                        if r.get("mean_step_ms") is not None else r.get("error", r.get("skipped", "no steps"))))
    return lines


def run(args: argparse.Namespace, device: torch.device) -> dict:
    plan = PLANS["cpu" if device.type == "cpu" else "quick" if args.quick else "full"]
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    start = time.monotonic()
    report = dict(machine=machine_info(device, device.type == "cpu"), elapsed_s=0.0,
                  config=dict(plan=asdict(plan), time_limit_s=args.time_limit, sections=args.sections),
                  sections={name: {"skipped": "not selected (--sections)"} for name in SECTIONS})
    share = 0.0
    for name, section in (("attention", attention_section), ("training", training_section),
                          ("decode", decode_section)):
        share += SHARES[name]
        if name not in args.sections:
            continue
        t0 = time.monotonic()
        deadline = Deadline(start + share * args.time_limit)
        report["sections"][name] = {**guarded(section, plan, device, dtype, deadline),
                                    "seconds": time.monotonic() - t0}
        report["elapsed_s"] = time.monotonic() - start
        save(report, args.out)  # after every section: a cut-short run keeps what it measured
        print(f"{name}: {report['sections'][name]['seconds']:.0f} s", file=sys.stderr, flush=True)
    return report


def finish(report: dict) -> None:
    sections = [s for s in report["sections"].values() if "skipped" not in s]
    report["failures"] = [f for s in sections for f in s.get("failures", [s.get("error", "")] if "error" in s else [])]
    report["complete"] = not any(TIME_SKIP["skipped"] in json.dumps(s) for s in sections)  # anywhere inside
    report["passed"] = not report["failures"]


def save(report: dict, out: Path) -> None:
    finish(report)
    write_text_atomic(out / "gpu_check.json", json.dumps(report, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer steps (CUDA)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: development only (tiny shapes, float32; no Flex backward): not a result")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    shares = ", ".join(f"{k} {v * 100:.0f}%%" for k, v in SHARES.items())  # %% : argparse formats help
    parser.add_argument("--time-limit", type=float, default=390.0,
                        help=f"seconds for all sections (shares: {shares}); a step started before it runs out "
                             "finishes, so leave ~1.5 min of the 8 for start-up and that overrun")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    report = run(args, device)
    report["config"]["out"] = str(args.out)
    save(report, args.out)
    plot(report, args.out / "gpu_check.png")
    print("\n".join(summary_lines(report)))
    for failure in report["failures"]:
        print(f"FAILED {failure}")
    verdict = "FAILED" if not report["passed"] else "PASSED" if report["complete"] else "INCOMPLETE (time limit)"
    print(f"{verdict} in {report['elapsed_s']:.0f} s; wrote {args.out / 'gpu_check.json'} and gpu_check.png")
    return 0 if report["passed"] and report["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
