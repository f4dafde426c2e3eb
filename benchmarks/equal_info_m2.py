"""Equal-Info Windows M2 benchmark: one small M2 over bytes, SentencePiece and EqualInfoAC[b16, v65k].

The same training text (first ``--train-docs`` documents of ``../shared/data/corpus/train.jsonl``,
bundled ``data/sample`` if absent) is packed three ways with the project's tools
(``tools/preprocess_data.py --tokenizer bytes`` / ``sentencepiece``, ``tools/compress_corpus.py
--scheme equal_info --window-bits 16 --vocab 65536 --rule delay``). The same M2 architecture
(``configs/m2_small.yaml``) is trained on each with ``python -m megacompress.train`` for the same
compute: the same steps x sequences x tokens per sequence, so the same non-embedding FLOPs (the
paper's budget; the embedding / softmax FLOPs grow with the vocabulary and are reported too).
Each is exported and scored on the validation documents by ``python -m megacompress.methods.equal_info.evaluate``
(bits per byte of the original text, comparable across the three).

Generation latency, measured by generating (``latency``): for each tokenization and M2 size
(the small M2 above and a ~25 M non-embedding-parameter one, random weights: timing only), each
of ``--batches`` rows continues a validation document's first 128 bytes by the tokens of its
next 1,000 bytes, which the generation loop is forced to emit (``forced_tokens``: a fixed
number of tokens, whatever the random weights would sample), then an end-of-document. The
time is split into the prompt's encoding (M1 compresses it for EqualInfo), M2's KV-cached
generation, and the decoding of the generated tokens to text (M1 decodes every window for
EqualInfo, through the tokenizer ``megacompress generate`` uses; the text must equal the
original bytes). Reported per 1,000 bytes: M2 steps, seconds, M1 seconds.

Writes ``--out`` (JSON, default ``benchmarks/results/equal_info_m2.json``) and a PNG beside it::

    python benchmarks/equal_info_m2.py --quick --m1 runs/m1/export    # <= ~15 min on 2 cores
    python benchmarks/equal_info_m2.py --latency-only --m1 runs/m1/export   # the generation table, minutes

JSON: ``models`` (one per tokenization: training and bits/byte) and ``results`` (one per
tokenization x size x batch: ``scheme``, ``size``, ``batch``, ``m2_steps_per_kb``,
``seconds_per_kb``, ``m1_seconds_per_kb``, ``m2_seconds_per_kb``, ...), and ``goals``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megacompress.atomic import atomic_write, write_text_atomic  # noqa: E402

PAPER_25M = {"bytes": 1.29, "sentencepiece": 1.12, "equal_info": 1.25}  # paper, bits/byte at 25M params: docs/equal_info.md, "Published results"
KINDS = ("bytes", "sentencepiece", "equal_info")


def sh(args: list[str], threads: int) -> str:
    """Run a project CLI (the engine, the packers) in a child process; its stdout."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(args)}\n{done.stderr[-3000:]}")
    return done.stdout


def write_split(source: Path, out: Path, docs: int, max_bytes: int) -> int:
    """First ``docs`` documents of ``source`` cut to ``max_bytes`` UTF-8 bytes -> ``out``; total bytes."""
    total = 0
    with open(source) as f, open(out, "w") as w:
        for i, line in enumerate(f):
            if i == docs:
                break
            text = json.loads(line)["text"].encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
            total += len(text.encode("utf-8"))
            w.write(json.dumps({"text": text}) + "\n")
    return total


def sentencepiece_model(work: Path, sp_vocab: int) -> str:
    """The SentencePiece model trained on the work directory's training text (made once)."""
    from megacompress.data.tokenizers import train_sentencepiece

    sp_model = str(work / "sp.model")
    if not Path(sp_model).is_file():
        txt = work / "train.txt"
        txt.write_text("".join(json.loads(line)["text"] + "\n" for line in open(work / "train.jsonl")))
        sp_model = train_sentencepiece([str(txt)], str(work / "sp"), vocab_size=sp_vocab)
    return sp_model


def pack(kind: str, work: Path, m1: str, sp_vocab: int) -> dict:
    """Train / valid shards of one kind: ``{"train", "valid"}`` prefixes and the tokenizer section."""
    prefixes = {}
    sp_model = sentencepiece_model(work, sp_vocab) if kind == "sentencepiece" else None
    for split in ("train", "valid"):
        out = str(work / kind / split)
        prefixes[split] = f"{out}_text_document"
        if Path(f"{prefixes[split]}.meta.json").is_file():  # packed by an earlier run in this --work-dir
            continue
        if kind == "equal_info":
            sh(["tools/compress_corpus.py", "--m1", m1, "--scheme", "equal_info", "--window-bits", "16", "--vocab",
                "65536", "--rule", "delay", "--input", str(work / f"{split}.jsonl"), "--output-prefix", out,
                "--workers", "2", "--partitions", "2"], threads=1)
        else:
            extra = ["--tokenizer-model", sp_model] if kind == "sentencepiece" else []
            sh(["tools/preprocess_data.py", "--input", str(work / f"{split}.jsonl"), "--output-prefix", out,
                "--tokenizer", kind, *extra, "--append-eod"], threads=1)
    if kind == "equal_info":
        tokenizer = {"kind": "bitstream", "model_path": f"{prefixes['train']}.meta.json"}
    elif kind == "sentencepiece":
        tokenizer = {"kind": "sentencepiece", "model_path": sp_model}
    else:
        tokenizer = {"kind": "bytes"}
    return {**prefixes, "tokenizer": tokenizer, "data_kind": "bitstream" if kind == "equal_info" else "gpt"}


def train_m2(kind: str, shards: dict, work: Path, args) -> tuple[Path, dict]:
    """Train the M2 of ``configs/m2_small.yaml`` on one kind's shards; its exported directory and training figures."""
    from megacompress.data.tokenizers import build_tokenizer

    tok = shards["tokenizer"]
    vocab = build_tokenizer(tok["kind"], tok.get("model_path")).vocab_size
    run = work / kind / "run"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run each time: the engine would resume an old one
    sets = {"model.vocab_size": vocab, "data.data_path": json.dumps([shards["train"]]),
            "data.kind": shards["data_kind"],
            "tokenizer.kind": tok["kind"], "schedule.train_steps": args.steps, "logging.run_dir": str(run),
            "logging.progress_bar": "false", "eval.data_path": json.dumps([shards["valid"]])}
    if "model_path" in tok:
        sets["tokenizer.model_path"] = tok["model_path"]
    start = time.perf_counter()
    sh(["-m", "megacompress.train", "--config", str(REPO / "configs" / "m2_small.yaml"),
        *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]], threads=args.threads)
    seconds = time.perf_counter() - start
    export = work / kind / "export"
    sh(["tools/convert_checkpoint.py", "export", str(run / "checkpoints"), str(export)], threads=1)
    metrics = [json.loads(line) for line in open(run / "metrics.jsonl")]
    last = [m for m in metrics if m.get("split") == "train"][-1]
    return export, {"train_s": seconds, "final_train_loss": last["loss"], "tokens_seen": last["tokens_seen"]}


def ensure_m1(path: str | None, work: Path) -> str:
    """The exported M1 to use; without one, a few steps of ``configs/tiny_m1.yaml`` on the training text."""
    if path and (Path(path) / "model.safetensors").is_file():
        return path
    data = work / "m1_data" / "train"
    sh(["tools/preprocess_data.py", "--input", str(work / "train.jsonl"), "--output-prefix", str(data),
        "--tokenizer", "bytes", "--append-eod"], threads=1)
    shard = json.dumps([f"{data}_text_document"])
    sh(["-m", "megacompress.train", "--config", "configs/tiny_m1.yaml", "--set", f"data.data_path={shard}",
        "--set", f"eval.data_path={shard}", "--set", f"logging.run_dir={work / 'm1'}",
        "--set", "schedule.train_steps=200", "--set", "logging.progress_bar=false"], threads=2)
    sh(["tools/convert_checkpoint.py", "export", str(work / "m1" / "checkpoints"), str(work / "m1" / "export")], 1)
    return str(work / "m1" / "export")


# M2 shapes of the latency table: the small M2 of configs/m2_small.yaml and ~25 M non-embedding
# parameters (12 x 512^2 x 8 layers x (4 + 3 x 1408 / 512) / 12 = 25.7 M); context for 128 + 1,001 bytes.
SIZES = {"small": dict(hidden_size=96, num_layers=2, num_heads=4, ffn_hidden_size=256),
         "25m": dict(hidden_size=512, num_layers=8, num_heads=8, ffn_hidden_size=1408)}
PROMPT_BYTES, KB = 128, 1000


def _cut(text: str, start: int, size: int) -> str:
    """The characters of ``text`` within UTF-8 bytes [start, start + size), whole characters only."""
    return text.encode("utf-8")[start:start + size].decode("utf-8", errors="ignore")


def latency_tokenizers(work: Path, m1: str, sp_vocab: int) -> dict:
    """The tokenizer of every kind, ready to encode and decode text (EqualInfo: with M1)."""
    from megacompress.data.tokenizers import build_tokenizer
    from megacompress.methods.equal_info.codec import CodecConfig
    from megacompress.methods.equal_info.m1 import M1
    from megacompress.methods.equal_info.tokenizer import BitstreamTokenizer

    model = M1(m1)
    bitstream = BitstreamTokenizer(CodecConfig(scheme="equal_info", vocab=65536, window_bits=16, rule="delay"),
                                   model.hash, m1_path=m1)
    return {"bytes": lambda: build_tokenizer("bytes"),
            "sentencepiece": lambda: build_tokenizer("sentencepiece", sentencepiece_model(work, sp_vocab)),
            "equal_info": lambda: bitstream.with_m1(model)}  # a fresh one: no decoded windows remembered


def generation_latency(kind: str, make_tokenizer, texts: list[str], size: str, batch: int, threads: int) -> dict:
    """Generate 1,000 bytes per row (forced tokens) with a random M2 of ``size``; the time split."""
    import torch

    from megacompress.generation.generate import generate
    from megacompress.models.config import ModelConfig
    from megacompress.models.flops import count_parameters
    from megacompress.models.gpt import GPT

    torch.set_num_threads(threads)
    tokenizer = make_tokenizer()
    rows = [texts[i % len(texts)] for i in range(batch)]
    prompts_text = [_cut(t, 0, PROMPT_BYTES) for t in rows]
    targets = [_cut(t, len(p.encode("utf-8")), KB) for t, p in zip(rows, prompts_text)]
    start = time.perf_counter()
    prompts = [tokenizer.encode(p) for p in prompts_text]
    encode_s = time.perf_counter() - start
    new = [tokenizer.encode(t) for t in targets]  # what M2 is made to emit: the real continuation
    longest = max(map(len, new))
    forced = torch.full((batch, longest + 1), tokenizer.eod, dtype=torch.long)
    for row, ids in enumerate(new):
        forced[row, :len(ids)] = torch.tensor(ids)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, max_seq_len=max(map(len, prompts)) + longest + 1,
                         **SIZES[size])
    model = GPT(config, seed=0).eval()
    generate(model, prompts, 8, eod_id=tokenizer.eod, forced_tokens=forced[:, :8])  # warm-up
    start = time.perf_counter()
    out = generate(model, prompts, longest + 1, eod_id=tokenizer.eod, forced_tokens=forced)
    m2_s = time.perf_counter() - start
    tokenizer = make_tokenizer()  # decoding starts with nothing remembered
    start = time.perf_counter()
    texts_out = [tokenizer.decode([t for t in tokens if t != tokenizer.eod]) for tokens in out.tokens]
    decode_s = time.perf_counter() - start
    if texts_out != targets:
        raise SystemExit(f"{kind}: the generated tokens do not decode to the text they were made from")
    kb = sum(len(t.encode("utf-8")) for t in targets) / KB
    m1 = kind == "equal_info"
    return {"scheme": kind, "size": size, "batch": batch, "threads": threads, "vocab_size": config.vocab_size,
            "non_embedding_params": count_parameters(config).non_embedding, "bytes_generated": int(kb * KB),
            "m2_steps": longest + 1, "m2_steps_per_kb": sum(map(len, new)) / kb,
            "prompt_encode_s": encode_s, "m2_s": m2_s, "decode_s": decode_s,
            "seconds_per_kb": (encode_s + m2_s + decode_s) / kb, "m2_seconds_per_kb": m2_s / kb,
            "m1_seconds_per_kb": (encode_s + decode_s) / kb if m1 else 0.0,
            "m1_encode_seconds_per_kb": encode_s / kb if m1 else 0.0,
            "m1_decode_seconds_per_kb": decode_s / kb if m1 else 0.0}


def latency(args, work: Path, m1: str) -> tuple[list[dict], dict]:
    """The latency table and its goals (EqualInfo vs bytes)."""
    texts = [json.loads(line)["text"] for line in open(work / "valid.jsonl")]
    texts = [t for t in texts if len(t.encode("utf-8")) >= PROMPT_BYTES + KB + 8] or texts
    tokenizers = latency_tokenizers(work, m1, args.sp_vocab)
    for make in tokenizers.values():  # load M1's compiled kernels and the SentencePiece model first
        warm = make()
        warm.decode(warm.encode(texts[0][:200]))
    results = []
    for size in args.sizes:
        for batch in args.batches:
            for kind in KINDS:
                results.append(generation_latency(kind, tokenizers[kind], texts, size, batch, args.threads))
                r = results[-1]
                print(f"latency {kind:>13} {size:>5} batch {batch}: {r['m2_steps_per_kb']:.0f} M2 steps/KB, "
                      f"{r['seconds_per_kb']:.3f} s/KB (M1 {r['m1_seconds_per_kb']:.3f})", flush=True)
    pick = {(r["scheme"], r["size"], r["batch"]): r for r in results}
    goals = {}
    for size in args.sizes:
        for batch in args.batches:
            eq, raw = pick[("equal_info", size, batch)], pick[("bytes", size, batch)]
            goals[f"{size}_batch{batch}"] = {
                "fewer_m2_steps_than_bytes": raw["m2_steps_per_kb"] / eq["m2_steps_per_kb"],
                "steps_goal_2_5x_met": raw["m2_steps_per_kb"] / eq["m2_steps_per_kb"] >= 2.5,
                "wall_clock_ratio_equal_info_over_bytes": eq["seconds_per_kb"] / raw["seconds_per_kb"],
                "faster_than_bytes": eq["seconds_per_kb"] < raw["seconds_per_kb"]}
    return results, goals


def run(args, work: Path) -> dict:
    from megacompress.methods.equal_info.m1 import M1

    shared = REPO.parent / "shared" / "data" / "corpus"
    source = shared if (shared / "train.jsonl").exists() else REPO / "data" / "sample"
    train_bytes = write_split(source / "train.jsonl", work / "train.jsonl", args.train_docs, args.doc_bytes)
    valid_bytes = write_split(source / "valid.jsonl", work / "valid.jsonl", args.valid_docs, args.doc_bytes)
    m1 = ensure_m1(args.m1, work)
    report = {"source": str(source), "train_bytes": train_bytes, "valid_bytes": valid_bytes,
              "valid_documents": args.valid_docs, "m1": m1, "m1_hash": M1(m1).hash,
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "budget": {"steps": args.steps, "note": "same steps x global batch x seq_len tokens for every M2 "
                         "(configs/m2_small.yaml): equal non-embedding training FLOPs"}, "models": []}
    for kind in KINDS if not args.latency_only else ():
        t0 = time.perf_counter()
        shards = pack(kind, work, m1, args.sp_vocab)
        pack_s = time.perf_counter() - t0
        export, training = train_m2(kind, shards, work, args)
        report["models"].append({"kind": kind, "pack_s": pack_s, **training,
                                 **measure(kind, shards, export, args)})
    report["results"], report["goals"] = latency(args, work, m1)
    return report


def measure(kind: str, shards: dict, export: Path, args) -> dict:
    """Budget and validation bits/byte of one exported M2."""
    from megacompress.models.config import ModelConfig
    from megacompress.models.flops import count_parameters, flops_per_token

    extra = ["--tokenizer-model", shards["tokenizer"]["model_path"]] if kind == "sentencepiece" else []
    score = json.loads(sh(["-m", "megacompress.methods.equal_info.evaluate", "--model", str(export), "--data-prefix",
                           shards["valid"], *extra], threads=args.threads).strip().splitlines()[-1])
    config = ModelConfig.from_dict(json.loads((export / "config.json").read_text()))
    params = count_parameters(config)
    train_tokens = args.steps * config.max_seq_len * _global_batch()
    return {"vocab_size": config.vocab_size, "non_embedding_params": params.non_embedding,
            "total_params": params.total, "train_tokens": train_tokens,
            "train_flops_non_embedding": 6 * params.non_embedding * train_tokens,
            "train_flops_total": flops_per_token(config) * train_tokens,
            "train_epochs": train_tokens / _shard_tokens(shards["train"]),
            "valid_bytes_per_token": score["bytes_per_token"], "bits_per_byte": score["bits_per_byte"],
            "paper_bits_per_byte_25m": PAPER_25M[kind]}


def _global_batch() -> int:
    import yaml

    return yaml.safe_load((REPO / "configs" / "m2_small.yaml").read_text())["schedule"]["global_batch_size"]


def _shard_tokens(prefix: str) -> int:
    from megacompress.data.indexed import IndexedDataset

    shard = IndexedDataset(prefix)
    return int(sum(len(shard[i]) for i in range(len(shard))))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, results = report["models"], report["results"]
    fig, axes = plt.subplots(1, 3 if models else 2, figsize=(16 if models else 11, 4))
    if models:
        a, axes = axes[0], axes[1:]
        x = np.arange(len(models))
        a.bar(x - 0.2, [m["bits_per_byte"] for m in models], 0.4, label="measured")
        a.bar(x + 0.2, [m["paper_bits_per_byte_25m"] for m in models], 0.4, label="paper, 25M params (C4)")
        a.set_xticks(x, [m["kind"] for m in models])
        a.set_ylabel("validation bits / byte")
        a.set_title(f"same compute: {report['budget']['steps']} steps")
        a.legend()
    labels = [f"{r['scheme'][:5]}\n{r['size']} b{r['batch']}" for r in results]
    x = np.arange(len(results))
    steps, times = axes
    steps.bar(x, [r["m2_steps_per_kb"] for r in results])
    steps.set_xticks(x, labels, fontsize=7)
    steps.set_ylabel("M2 steps per 1,000 bytes generated")
    m2 = np.array([r["m2_seconds_per_kb"] for r in results])
    m1 = np.array([r["m1_seconds_per_kb"] for r in results])
    other = np.array([r["seconds_per_kb"] for r in results]) - m2 - m1  # tokenizer time of bytes / SentencePiece
    times.bar(x, m2, label="M2 generation")
    times.bar(x, m1, bottom=m2, label="M1 encode + decode")
    times.bar(x, other, bottom=m2 + m1, label="tokenizer")
    times.set_xticks(x, labels, fontsize=7)
    times.set_ylabel("seconds per 1,000 bytes generated")
    times.set_yscale("log")
    times.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--m1", default=str(REPO / "runs" / "m1" / "export"),
                   help="exported M1 (default runs/m1/export; absent: train configs/tiny_m1.yaml briefly)")
    p.add_argument("--quick", action="store_true",
                   help="40 training documents of 4 kB, 200 steps, SentencePiece 2k (<= ~15 min on 2 cores)")
    p.add_argument("--train-docs", type=int, default=120)
    p.add_argument("--valid-docs", type=int, default=8)
    p.add_argument("--doc-bytes", type=int, default=10240, help="cut every document to this many bytes (paper)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps of every M2")
    p.add_argument("--sp-vocab", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2, help="torch threads for training / evaluation")
    p.add_argument("--latency-only", action="store_true", help="skip training: the generation table only")
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES), help="M2 sizes of the latency table")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8], help="batch sizes of the latency table")
    p.add_argument("--work-dir", type=Path,
                   help="keep shards and runs here (default: a temporary directory); a rerun with the same data "
                   "flags reuses its shards")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "equal_info_m2.json")
    args = p.parse_args(argv)
    if args.quick:
        args.train_docs, args.valid_docs, args.doc_bytes, args.steps, args.sp_vocab = 40, 4, 4096, 200, 2048
    with tempfile.TemporaryDirectory(prefix="equal_info_m2_") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        report = run(args, work)
        report["total_s"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    plot(report, args.out.with_suffix(".png"))
    print("\n".join(summary(report)))
    print(f"wrote {args.out} and {args.out.with_suffix('.png').name}")


def summary(report: dict) -> list[str]:
    lines = [f"{m['kind']:>13} v{m['vocab_size']:<6} {m['valid_bytes_per_token']:5.2f} bytes/token "
             f"{m['bits_per_byte']:.3f} bits/byte (paper 25M {m['paper_bits_per_byte_25m']}) "
             f"{m['train_epochs']:.2f} epochs" for m in report["models"]]
    lines += [f"{name}: EqualInfo {g['fewer_m2_steps_than_bytes']:.2f}x fewer M2 steps than bytes (goal 2.5x: "
              f"{'met' if g['steps_goal_2_5x_met'] else 'NOT met'}), wall-clock {g['wall_clock_ratio_equal_info_over_bytes']:.2f}x "
              f"bytes'" for name, g in report["goals"].items()]
    return lines + [f"total {report['total_s']:.0f} s"]


if __name__ == "__main__":
    main()
