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

Generation cost per 1,000 bytes of text: M2 steps = 1000 / (validation bytes per token);
wall-clock = steps x the measured seconds of one KV-cached sampling step of that M2 (batch 1,
fastest of 3), plus for EqualInfo M1's decoding of those tokens into text (measured by decoding
the validation shard).

Writes ``--out`` (JSON, default ``benchmarks/results/equal_info_m2.json``) and a PNG beside it::

    python benchmarks/equal_info_m2.py --quick --m1 runs/m1/export    # <= ~15 min on 2 cores
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


def pack(kind: str, work: Path, m1: str, sp_vocab: int) -> dict:
    """Train / valid shards of one kind: ``{"train", "valid"}`` prefixes and the tokenizer section."""
    prefixes = {}
    if kind == "sentencepiece":
        from megacompress.data.tokenizers import train_sentencepiece

        sp_model = str(work / "sp.model")
        if not Path(sp_model).is_file():
            txt = work / "train.txt"
            txt.write_text("".join(json.loads(line)["text"] + "\n" for line in open(work / "train.jsonl")))
            sp_model = train_sentencepiece([str(txt)], str(work / "sp"), vocab_size=sp_vocab)
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


def generation_step_s(export: Path, eod: int, tokens: int = 48) -> float:
    """Seconds per KV-cached sampling step of the exported M2 (batch 1, from an eod prompt)."""
    import torch

    from megacompress.generation.generate import generate
    from megacompress.generation.sampling import SamplingConfig
    from megacompress.models.registry import load_pretrained

    torch.set_num_threads(1)
    model = load_pretrained(export).eval()
    sampling = SamplingConfig(temperature=1.0, seed=0)
    generate(model, [[eod]], 4, sampling=sampling)  # warm-up
    times = []
    for _ in range(3):  # the fastest of three: the machine is shared, other jobs only add time
        start = time.perf_counter()
        generate(model, [[eod]], tokens, sampling=sampling)
        times.append(time.perf_counter() - start)
    return min(times) / tokens


def m1_decode_s_per_byte(prefix: str, m1: str) -> float:
    """M1's decoding time per byte of text for EqualInfo tokens (the validation shard, tools/decompress_corpus.py)."""
    from megacompress.methods.equal_info.decompress import main as decompress_main

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        decompress_main(["--m1", m1, "--input-prefix", prefix, "--output", f"{tmp}/out.jsonl"])
        seconds = time.perf_counter() - start
        size = sum(len(json.loads(line)["text"].encode("utf-8")) for line in open(f"{tmp}/out.jsonl"))
    return seconds / size


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
    for kind in KINDS:
        t0 = time.perf_counter()
        shards = pack(kind, work, m1, args.sp_vocab)
        pack_s = time.perf_counter() - t0
        export, training = train_m2(kind, shards, work, args)
        report["models"].append({"kind": kind, "pack_s": pack_s, **training,
                                 **measure(kind, shards, export, m1, args)})
    return report


def measure(kind: str, shards: dict, export: Path, m1: str, args) -> dict:
    """Budget, validation bits/byte and generation cost of one exported M2."""
    from megacompress.data.tokenizers import build_tokenizer
    from megacompress.models.config import ModelConfig
    from megacompress.models.flops import count_parameters, flops_per_token

    extra = ["--tokenizer-model", shards["tokenizer"]["model_path"]] if kind == "sentencepiece" else []
    score = json.loads(sh(["-m", "megacompress.methods.equal_info.evaluate", "--model", str(export), "--data-prefix",
                           shards["valid"], *extra], threads=args.threads).strip().splitlines()[-1])
    config = ModelConfig.from_dict(json.loads((export / "config.json").read_text()))
    params = count_parameters(config)
    eod = build_tokenizer(shards["tokenizer"]["kind"], shards["tokenizer"].get("model_path")).eod
    step_s = generation_step_s(export, eod)
    steps_per_kb = 1000 / score["bytes_per_token"]
    m1_s_per_kb = 1000 * m1_decode_s_per_byte(shards["valid"], m1) if kind == "equal_info" else 0.0
    train_tokens = args.steps * config.max_seq_len * _global_batch()
    return {"vocab_size": config.vocab_size, "non_embedding_params": params.non_embedding,
            "total_params": params.total, "train_tokens": train_tokens,
            "train_flops_non_embedding": 6 * params.non_embedding * train_tokens,
            "train_flops_total": flops_per_token(config) * train_tokens,
            "train_epochs": train_tokens / _shard_tokens(shards["train"]),
            "valid_bytes_per_token": score["bytes_per_token"], "bits_per_byte": score["bits_per_byte"],
            "paper_bits_per_byte_25m": PAPER_25M[kind],
            "generation_steps_per_1000_bytes": steps_per_kb, "m2_step_s": step_s,
            "m1_decode_s_per_1000_bytes": m1_s_per_kb, "wall_s_per_1000_bytes": steps_per_kb * step_s + m1_s_per_kb}


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

    models = report["models"]
    x = np.arange(len(models))
    labels = [m["kind"] for m in models]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.bar(x - 0.2, [m["bits_per_byte"] for m in models], 0.4, label="measured")
    a.bar(x + 0.2, [m["paper_bits_per_byte_25m"] for m in models], 0.4, label="paper, 25M params (C4)")
    a.set_xticks(x, labels)
    a.set_ylabel("validation bits / byte")
    a.set_title(f"same compute: {report['budget']['steps']} steps")
    a.legend()
    m2 = [m["generation_steps_per_1000_bytes"] * m["m2_step_s"] for m in models]
    b.bar(x, m2, label="M2 sampling")
    b.bar(x, [m["m1_decode_s_per_1000_bytes"] for m in models], bottom=m2, label="M1 decoding")
    for i, m in enumerate(models):
        b.text(i, m["wall_s_per_1000_bytes"], f"{m['generation_steps_per_1000_bytes']:.0f} steps", ha="center",
               va="bottom")
    b.set_xticks(x, labels)
    b.set_ylabel("seconds per 1,000 bytes generated")
    b.legend()
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
             f"{m['train_epochs']:.2f} epochs; {m['generation_steps_per_1000_bytes']:.0f} steps and "
             f"{m['wall_s_per_1000_bytes']:.2f} s per 1,000 bytes (M1 {m['m1_decode_s_per_1000_bytes']:.2f} s)"
             for m in report["models"]]
    return lines + [f"total {report['total_s']:.0f} s"]

if __name__ == "__main__":
    main()
