"""`make demo`: preprocess -> train (2 CPU processes, DeepSpeed ZeRO-2) -> stop -> resume
-> export -> generate with the KV cache. About 5 minutes on 2 cores.

Everything lands in runs/demo/: data/ (shards), metrics.jsonl, checkpoints/, export/.
Run it from the repository root: ``.venv/bin/python examples/demo.py [--help]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = Path("runs/demo")
DATA = RUN / "data"
CONFIG = "configs/tiny_gpt.yaml"


def header(title: str) -> None:
    print(f"\n{'=' * 78}\n== {title}\n{'=' * 78}", flush=True)


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore"}
    start = time.time()
    subprocess.run(cmd, check=True, cwd=REPO, env=env)
    print(f"[{time.time() - start:.0f} s]", flush=True)


def preprocess() -> None:
    header("1. Preprocess data/sample/{train,valid}.jsonl (GPT-2 BPE, EOD, sentence boundaries)")
    for split in ("train", "valid"):
        prefix = DATA / split
        if Path(REPO / f"{prefix}_text_document.meta.json").exists():
            print(f"{prefix}_text_document: already there, reusing it")
            continue
        run([sys.executable, "-m", "megacompress.data.preprocess", "--input", f"data/sample/{split}.jsonl",
             "--output-prefix", str(prefix), "--tokenizer", "gpt2", "--append-eod", "--split-sentences"])


def train(steps: int, stop_at: int) -> None:
    run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
         "--master-port=29533", "-m", "megacompress.train", "--config", CONFIG,
         "--set", f"logging.run_dir={RUN}", "--set", f"schedule.train_steps={steps}",
         "--set", "schedule.warmup_steps=10", "--set", "optimizer.lr=3e-3", "--set", "schedule.global_batch_size=8",
         "--set", "schedule.micro_batch_size=4", "--set", "checkpoint.interval=40",
         "--set", "eval.interval=40", "--set", "logging.log_interval=10", "--stop-at-step", str(stop_at)])


def metrics() -> list[dict]:
    return [json.loads(line) for line in (REPO / RUN / "metrics.jsonl").read_text().splitlines()]


def generate_sample(prompt: str) -> str:
    from megacompress.data.tokenizers import build_tokenizer
    from megacompress.generation.generate import generate
    from megacompress.generation.sampling import SamplingConfig
    from megacompress.models.gpt import GPT

    tokenizer = build_tokenizer("gpt2")
    model = GPT.from_pretrained(REPO / RUN / "export").eval()
    # A tiny model's greedy output is all newlines; sampling shows more of what it learnt.
    out = generate(model, [tokenizer.encode(prompt)], max_new_tokens=40, eod_id=tokenizer.eod,
                   sampling=SamplingConfig(temperature=0.8, top_k=40, seed=0))
    return tokenizer.decode(out.tokens[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=120, help="total optimizer steps (default 120)")
    parser.add_argument("--stop-at", type=int, default=80, help="stop (checkpoint) after this step, then resume (default 80)")
    args = parser.parse_args()
    if (REPO / RUN / "checkpoints").exists() or (REPO / RUN / "metrics.jsonl").exists():
        import shutil  # a fresh run each time; the shards are kept

        shutil.rmtree(REPO / RUN / "checkpoints", ignore_errors=True)
        (REPO / RUN / "metrics.jsonl").unlink(missing_ok=True)
    start = time.time()
    preprocess()

    header(f"2. Train the tiny GPT on 2 CPU processes (ZeRO-2), stopping after step {args.stop_at}")
    train(args.steps, args.stop_at)
    print(f"latest checkpoint: {(REPO / RUN / 'checkpoints' / 'latest').read_text()}")

    header(f"3. Resume from the checkpoint and finish at step {args.steps}")
    train(args.steps, 0)

    header("4. Export consolidated weights (safetensors) and generate with the KV cache")
    run([sys.executable, "tools/convert_checkpoint.py", "export", str(RUN / "checkpoints"), str(RUN / "export")])
    prompt = "First Citizen:\nBefore we proceed any further,"
    sample = generate_sample(prompt)

    header("Summary")
    records = metrics()
    train_lines = [r for r in records if r["split"] == "train"]
    valid_lines = [r for r in records if r["split"] == "valid"]
    print(f"train loss: {train_lines[0]['loss']:.3f} (step {train_lines[0]['step']}) -> "
          f"{train_lines[-1]['loss']:.3f} (step {train_lines[-1]['step']})")
    print(f"validation loss: {valid_lines[-1]['loss']:.3f} (ppl {valid_lines[-1]['ppl']:.1f}) at step "
          f"{valid_lines[-1]['step']}")
    print(f"throughput: {train_lines[-1]['tokens_per_s']:.0f} tokens/s (2 processes, last window)")
    print(f"sample (temperature 0.8, top-k 40, 40 tokens): {prompt + sample!r}")
    print(f"logs and metrics: {RUN}/metrics.jsonl, {RUN}/exit_status.json")
    print(f"checkpoints:      {RUN}/checkpoints (latest: {(REPO / RUN / 'checkpoints' / 'latest').read_text()})")
    print(f"exported model:   {RUN}/export (GPT.from_pretrained)")
    print(f"total time: {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
