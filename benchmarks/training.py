"""Training throughput and memory: DeepSpeed ZeRO-0..3 at 1 and 2 processes vs a plain PyTorch loop.

For each case (``tiny``; ``baseline-12`` at a short sequence / micro batch 1; ``baseline-12-2k``
at 4 x 512 = 2,048 tokens per micro batch, a realistic size) this measures, on synthetic token
batches:

* ``plain``: one process, ``GPT`` + ``torch.optim.AdamW`` (fused, the trainer's default) + clip, no DeepSpeed;
* ``zero{0,1,2,3}`` at 1 and 2 processes (torchrun, gloo): the same model and optimizer
  through ``deepspeed.initialize`` with a ``ds_configs/zero*.json`` template, micro batch
  equal to the plain loop's (so 2 processes do twice the tokens per step).

Reported per case: tokens/s over all processes, the ratio to ``plain``, and peak RSS per
rank (GB). Writes ``benchmarks/results/training.json`` and ``training.png``.
Usage: ``.venv/bin/python benchmarks/training.py [--models tiny baseline-12 baseline-12-2k] [--nprocs 1 2] [--stages 0 1 2 3]``.
The machine is shared: absolute numbers vary with load; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from megacompress.atomic import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# case -> (model preset, sequence length, micro batch, timed steps). "baseline-12-2k": the
# realistic size of issue 35 (2,048 tokens per micro batch; goal: ZeRO-1/2 on one process >= 0.9x plain).
CASES = {"tiny": ("tiny", 128, 8, 20), "baseline-12": ("baseline-12", 128, 1, 4),
         "baseline-12-2k": ("baseline-12", 512, 4, 3)}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def make_model(preset: str, seq: int):
    from megacompress.models.config import ModelConfig
    from megacompress.models.gpt import GPT

    return GPT(ModelConfig.from_preset(preset, max_seq_len=seq), seed=0)


def batch(preset: str, seq: int, micro: int, vocab: int, step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(0, vocab, (micro, seq + 1), generator=g)
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}


def timed_loop(step_fn, steps: int) -> float:
    step_fn(0)  # warm-up (allocations, DeepSpeed buckets)
    start = time.perf_counter()
    for i in range(1, steps + 1):
        step_fn(i)
    return time.perf_counter() - start


def run_plain(preset: str, seq: int, micro: int, steps: int) -> dict:
    model = make_model(preset, seq)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01,
                            fused=True)  # the trainer's default optimizer.implementation
    vocab = model.config.vocab_size

    def step(i: int) -> None:
        loss = model(**batch(preset, seq, micro, vocab, i)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)

    elapsed = timed_loop(step, steps)
    return {"tokens_per_s": steps * micro * seq / elapsed, "peak_rss_gb": [peak_rss_gb()]}


def worker(args: argparse.Namespace) -> None:
    """One rank of a DeepSpeed case (under torchrun); rank 0 prints a JSON line."""
    from megacompress.parallel import state
    from megacompress.training.trainer import import_deepspeed

    deepspeed = import_deepspeed()
    state.initialize(1)
    preset, seq, micro, steps = CASES[args.model]
    model = make_model(preset, seq)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01,
                            fused=True)  # the trainer's default optimizer.implementation
    ds = json.loads((REPO / "ds_configs" / f"zero{args.stage}.json").read_text())
    world = state.get_data_parallel_world_size()
    ds.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=1,
              train_batch_size=micro * world, gradient_clipping=0.5)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, mpu=state.mpu, config=ds)
    vocab = model.config.vocab_size
    rank = state.get_rank()

    def step(i: int) -> None:
        loss = engine(**batch(args.model, seq, micro, vocab, i * world + rank)).loss
        engine.backward(loss)
        engine.step()

    elapsed = torch.tensor(timed_loop(step, steps))
    torch.distributed.all_reduce(elapsed, op=torch.distributed.ReduceOp.MAX)
    rss = [None] * world
    torch.distributed.all_gather_object(rss, peak_rss_gb())
    if rank == 0:
        print("RESULT " + json.dumps({"tokens_per_s": steps * micro * seq * world / elapsed.item(),
                                      "peak_rss_gb": rss}), flush=True)


def launch(model: str, stage: int, nproc: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
           "--master-port=29641", str(Path(__file__).resolve()), "--worker", "--model", model, "--stage", str(stage)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"benchmark case {model} zero{stage} x{nproc} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 7), squeeze=False)
    for col, (model, cases) in enumerate(results.items()):
        names = list(cases)
        speed, memory = axes[0][col], axes[1][col]
        speed.bar(names, [cases[n]["ratio_to_plain"] for n in names])
        speed.axhline(1.0, color="gray", linestyle="--")
        speed.set_title(f"{model}: tokens/s relative to plain PyTorch")
        memory.bar(names, [max(cases[n]["peak_rss_gb"]) for n in names], color="tab:orange")
        memory.set_title(f"{model}: peak RSS of the largest rank (GB)")
        for ax in (speed, memory):
            ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--nprocs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--stages", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    torch.set_num_threads(1)
    results: dict = {}
    for model in args.models:
        preset, seq, micro, steps = CASES[model]
        plain = run_plain(preset, seq, micro, steps)
        cases = {"plain": {**plain, "ratio_to_plain": 1.0}}
        print(f"{model} plain: {plain['tokens_per_s']:.0f} tokens/s, peak RSS {plain['peak_rss_gb'][0]:.2f} GB",
              flush=True)
        for nproc in args.nprocs:
            for stage in args.stages:
                r = launch(model, stage, nproc)
                r["ratio_to_plain"] = r["tokens_per_s"] / plain["tokens_per_s"]
                cases[f"zero{stage}x{nproc}"] = r
                print(f"{model} zero{stage} x{nproc}: {r['tokens_per_s']:.0f} tokens/s "
                      f"({r['ratio_to_plain']:.2f}x plain), peak RSS/rank "
                      f"{', '.join(f'{x:.2f}' for x in r['peak_rss_gb'])} GB", flush=True)
                results[model] = cases
                save(results, args.models)  # after every case: a cut-short run keeps what it measured
    plot(results, RESULTS / "training.png")
    print(f"wrote {RESULTS / 'training.json'} and training.png")


def save(results: dict, models: list[str]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"seq_len_micro_batch_steps": {m: CASES[m] for m in models}, "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(), "note": "shared 2-core machine; compare ratios within one run"}
    write_text_atomic(RESULTS / "training.json", json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
