"""`make demo`: GPTHF end to end on 2 CPU cores, in a few minutes.

preprocess with sentence boundaries -> train a tiny GPTHF (2 encoder + 1 body layers) with
DeepSpeed ZeRO-2 on 2 processes, stopping and resuming -> train a tiny baseline GPT of the
same depth -> both validation losses -> export -> fast-generate a continuation -> a short
table of generation speed and KV-cache bytes: GPTHF fast vs slow vs the KV-cached baseline.

Everything lands in runs/demo/: data/ (shards), gpthf/ and gpt/ (metrics.jsonl,
checkpoints/, export/). Run it from the repository root: ``.venv/bin/python examples/demo.py [--help]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.stages import header, run  # noqa: E402

RUN = Path("runs/demo")
DATA = RUN / "data"
# Both models: hidden 64, 3 layers, sequence 128, one document chunk per sample.
MODELS = {"gpthf": ("configs/tiny_gpthf.yaml", []),
          "gpt": ("configs/tiny_gpt.yaml", ["model.num_layers=3", "data.kind=document", "data.use_sentences=false",
                                             "schedule.decay=linear"])}
# The demo is the 2-core CPU run, also on a GPU machine: DeepSpeed's CPU accelerator, one thread each.
CPU = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
PROMPT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\nFirst Citizen:\n"


def preprocess() -> None:
    header("1. Preprocess data/sample/{train,valid}.jsonl (GPT-2 BPE, EOD, sentence boundaries)")
    for split in ("train", "valid"):
        prefix = DATA / split
        if Path(REPO / f"{prefix}_text_document.meta.json").exists():
            print(f"{prefix}_text_document: already there, reusing it")
            continue
        extra = [] if split == "train" else ["--sentence-model", f"{DATA}/train_text_document.sentences.json"]
        run([sys.executable, "-m", "megacompress.data.preprocess", "--input", f"data/sample/{split}.jsonl",
             "--output-prefix", str(prefix), "--tokenizer", "gpt2", "--append-eod", "--split-sentences", *extra],
            env=CPU)


def train(name: str, steps: int, stop_at: int) -> None:
    config, extra = MODELS[name]
    sets = [f"logging.run_dir={RUN / name}", f"schedule.train_steps={steps}", "schedule.warmup_steps=10",
            "optimizer.lr=3e-3", "schedule.global_batch_size=8", "schedule.micro_batch_size=4",
            "checkpoint.interval=40", "eval.interval=40", "logging.log_interval=20", *extra]
    run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
         "--master-port=29533", "-m", "megacompress.train", "--config", config,
         *[arg for s in sets for arg in ("--set", s)], "--stop-at-step", str(stop_at)], env=CPU)


def metrics(name: str) -> list[dict]:
    return [json.loads(line) for line in (REPO / RUN / name / "metrics.jsonl").read_text().splitlines()]


def generation_table(models: dict, tokenizer) -> list[tuple[str, float, float]]:
    """(label, tokens/s, KV bytes per sequence) of greedy decoding of real text's continuation
    (forced, so sentences end where the text's do), batch 8, 24-token prompts, 96 new tokens."""
    import torch

    from megacompress.generation.generate import generate
    from megacompress.methods.gpthf.generation import encode_prompt, generate_fast
    from megacompress.generation.uncached import generate_uncached

    eos = tokenizer.special_id("eos")
    text = json.loads((REPO / "data/sample/valid.jsonl").open().readline())["text"]
    ids = encode_prompt(tokenizer, text[:20000], eos)
    batch, prompt_len, new = 8, 24, 96
    rows = [ids[i * 400:i * 400 + prompt_len + new] for i in range(batch)]
    prompts, forced = [r[:prompt_len] for r in rows], torch.tensor([r[prompt_len:] for r in rows])
    runs = [("GPTHF fast (sentence caches)", generate_fast, models["gpthf"], dict(eos_id=eos)),
            ("GPTHF slow (no cache)", generate_uncached, models["gpthf"], dict(eos_id=eos)),
            ("baseline GPT, KV cache", generate, models["gpt"], {})]
    table = []
    for label, fn, model, extra in runs:
        start = time.perf_counter()
        out = fn(model, prompts, new, forced_tokens=forced, **extra)
        table.append((label, batch * new / (time.perf_counter() - start), out.kv_cache_bytes / batch))
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps per model (default 120)")
    parser.add_argument("--stop-at", type=int, default=80,
                        help="GPTHF: stop (checkpoint) after this step, then resume (default 80)")
    args = parser.parse_args()
    for name in MODELS:  # a fresh run each time; the shards are kept
        shutil.rmtree(REPO / RUN / name, ignore_errors=True)
    start = time.time()
    preprocess()

    header(f"2. Train the tiny GPTHF on 2 CPU processes (DeepSpeed ZeRO-2), stopping after step {args.stop_at}")
    train("gpthf", args.steps, args.stop_at)
    header(f"3. Resume GPTHF from its checkpoint and finish at step {args.steps}")
    train("gpthf", args.steps, 0)
    header(f"4. Train the tiny baseline GPT (same width and depth, same shards) for {args.steps} steps")
    train("gpt", args.steps, 0)

    header("5. Export both (safetensors), fast-generate with GPTHF, time the generation algorithms")
    for name in MODELS:
        run([sys.executable, "tools/convert_checkpoint.py", "export", str(RUN / name / "checkpoints"),
             str(RUN / name / "export")], env=CPU)
    import torch

    from megacompress.data.sentences import SentenceSplitter
    from megacompress.data.tokenizers import build_tokenizer
    from megacompress.methods.gpthf.generation import encode_prompt, generate_fast
    from megacompress.generation.sampling import SamplingConfig
    from megacompress.models import load_pretrained

    torch.set_num_threads(1)
    tokenizer = build_tokenizer("gpt2")
    eos = tokenizer.special_id("eos")
    models = {name: load_pretrained(REPO / RUN / name / "export").eval() for name in MODELS}
    splitter = SentenceSplitter.load(str(REPO / DATA / "train_text_document.sentences.json"))
    # A tiny model's greedy output is mostly newlines; sampling shows more of what it learnt.
    out = generate_fast(models["gpthf"], [encode_prompt(tokenizer, PROMPT, eos, splitter)], 60, eos_id=eos,
                        eod_id=tokenizer.eod, sampling=SamplingConfig(temperature=0.8, top_k=40, seed=0))
    sample = tokenizer.decode([t for t in out.tokens[0] if t != eos])
    table = generation_table(models, tokenizer)

    header("Summary")
    for name, label in (("gpthf", "GPTHF-2-1"), ("gpt", "baseline-3")):
        records = metrics(name)
        train_lines = [r for r in records if r["split"] == "train"]
        valid = [r for r in records if r["split"] == "valid"][-1]
        print(f"{label:11s} train loss {train_lines[0]['loss']:.3f} -> {train_lines[-1]['loss']:.3f}; validation loss "
              f"{valid['loss']:.3f} (ppl {valid['ppl']:.1f}) at step {valid['step']}; "
              f"{train_lines[-1]['tokens_per_s']:.0f} tokens/s training")
    print(f"\nGPTHF sample (temperature 0.8, top-k 40, 60 tokens):\n{PROMPT + sample}\n")
    print("generation, batch 8, 24-token prompts + 96 tokens of real text (1 thread):")
    print(f"  {'':32s} {'tokens/s':>9s} {'KV bytes/seq':>13s}")
    for label, speed, kv in table:
        print(f"  {label:32s} {speed:9.0f} {kv:13,.0f}")
    print(f"\nruns: {RUN}/gpthf, {RUN}/gpt (metrics.jsonl, checkpoints/, export/)")
    print(f"generate: .venv/bin/python -m megacompress.generate --model {RUN}/gpthf/export --prompt 'First Citizen:' "
          f"--sentence-model {DATA}/train_text_document.sentences.json")
    print(f"total time: {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
