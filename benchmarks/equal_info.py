"""Equal-Info Windows benchmark: compression of every scheme, M1 bits/byte, coder and codec speed.

On ``../shared/data/corpus/valid.jsonl`` (the bundled ``data/sample/valid.jsonl`` if absent),
the first ``--documents`` documents cut to ``--doc-bytes`` bytes, with the exported M1 of
``--m1`` (a random tiny one with ``--random-m1``, for a smoke run):

* bytes per token for EqualInfoAC b16 / b32 x greedy / delay, plain AC, static AC, GZip,
  raw bytes (v256 and v65k) and SentencePiece (vocabulary ``--sp-vocab``, trained on the
  train split), beside the paper's column (C4, its M1) — every EqualInfo delay document is
  decoded back and compared (``delay_roundtrip_ok``);
* the fraction of greedy windows the look-ahead decoder cannot end correctly;
* M1 bits/byte (the quantized CDFs' code cost, i.e. ideal AC);
* encode / decode throughput (bytes/s) of EqualInfoAC b16 v65k delay as a ratio to M1's
  own teacher-forced torch forward on the same machine; coder-only symbols/s on one core.

Writes ``--out`` (JSON, default ``benchmarks/results/equal_info.json``) and a PNG beside it::

    python benchmarks/equal_info.py --m1 runs/m1/export            # ~minutes on 2 cores
    python benchmarks/equal_info.py --quick --random-m1             # smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megacompress.atomic import atomic_write, write_text_atomic  # noqa: E402
from megacompress.methods.equal_info import arithmetic as ac  # noqa: E402
from megacompress.methods.equal_info.codec import CodecConfig, build_codec  # noqa: E402
from megacompress.methods.equal_info.m1 import M1, M1Error  # noqa: E402
from megacompress.methods.equal_info.plain_ac import teacher_forced_cdfs  # noqa: E402
from megacompress.progress import progress  # noqa: E402

# The paper's bytes per token on C4 (v256, v65k): docs/equal_info.md, "Published results".
PAPER = {("sentencepiece", None, None): (None, 4.28), ("ac", None, None): (5.49, 10.98),
         ("static_ac", None, None): (1.73, 3.46), ("gzip", None, None): (2.23, 4.47),
         ("equal_info", 16, "greedy"): (2.66, 5.31), ("equal_info", 32, "greedy"): (3.49, 6.97),
         ("equal_info", 16, "delay"): (2.20, 4.40), ("bytes", None, None): (1.0, 2.0)}


def load_documents(n: int, max_bytes: int) -> tuple[list[bytes], str]:
    shared = REPO.parent / "shared" / "data" / "corpus" / "valid.jsonl"
    path = shared if shared.exists() else REPO / "data" / "sample" / "valid.jsonl"
    docs = []
    with open(path) as f:
        for line in f:
            docs.append(json.loads(line)["text"].encode("utf-8")[:max_bytes])
            if len(docs) == n:
                break
    return docs, str(path)


def m1_bits_per_byte(m1: M1, docs: list[bytes]) -> float:
    bits = 0.0
    for d, cdfs in zip(docs, teacher_forced_cdfs(m1, docs, min(m1.max_context, 1024))):
        sym = np.frombuffer(d, np.uint8)
        counts = cdfs[np.arange(len(d)), sym + 1] - cdfs[np.arange(len(d)), sym]
        bits += float(-np.log2(counts / ac.TOTAL).sum())
    return bits / sum(map(len, docs))


def torch_forward_bytes_per_s(m1_dir: str, docs: list[bytes], seconds: float = 5.0) -> float:
    """M1's teacher-forced torch forward (batched full contexts, fp32, this process's threads)."""
    import torch

    from megacompress.models.registry import load_pretrained

    model = load_pretrained(m1_dir).eval()
    seq = min(model.config.max_seq_len, 1024)
    data = np.frombuffer(b"".join(docs), np.uint8)
    reps = -(-8 * seq // max(1, len(data)))
    batch = torch.tensor(np.tile(data, reps)[:8 * seq].astype(np.int64)).view(8, seq)
    with torch.no_grad():
        model(batch[:1, :16])
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(batch)
            done += batch.numel()
    return done / (time.perf_counter() - start)


def coder_symbols_per_s(n: int = 2_000_000) -> float:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 256)) * 3
    cdfs = ac.quantize_counts(np.exp(logits))
    rows = rng.integers(0, 64, n)
    p = np.diff(cdfs, axis=1) / ac.TOTAL
    symbols = np.array([rng.choice(256, p=p[r]) for r in rows[:4096]])[np.arange(n) % 4096]
    ac.encode_stream(cdfs, rows[:100], symbols[:100])  # compiled
    start = time.perf_counter()
    ac.encode_stream(cdfs, rows, symbols)
    return n / (time.perf_counter() - start)


def sentencepiece_bytes_per_token(docs: list[bytes], vocab: int) -> float | None:
    try:
        from megacompress.data.tokenizers import SentencePieceTokenizer, train_sentencepiece
    except ImportError:
        return None
    shared = REPO.parent / "shared" / "data" / "corpus" / "train.jsonl"
    path = shared if shared.exists() else REPO / "data" / "sample" / "train.jsonl"
    with tempfile.TemporaryDirectory() as tmp:
        txt = Path(tmp) / "train.txt"
        with open(path) as f, open(txt, "w") as out:
            for line in f:
                out.write(json.loads(line)["text"] + "\n")
        tok = SentencePieceTokenizer(train_sentencepiece([str(txt)], f"{tmp}/sp", vocab_size=vocab))
        tokens = sum(len(tok.encode(d.decode("utf-8", errors="ignore"))) for d in docs)
    return sum(map(len, docs)) / tokens


def run(args) -> dict:
    docs, source = load_documents(args.documents, args.doc_bytes)
    total = sum(map(len, docs))
    if args.random_m1:
        from megacompress.models import GPT, ModelConfig

        args.m1 = tempfile.mkdtemp(prefix="random_m1_")
        GPT(ModelConfig(vocab_size=259, hidden_size=64, num_layers=2, num_heads=4, ffn_hidden_size=128,
                        max_seq_len=1024), seed=0).save_pretrained(args.m1)
    m1 = M1(args.m1)
    report = {"source": source, "documents": len(docs), "bytes": total, "m1": str(args.m1), "m1_hash": m1.hash,
              "m1_config": m1.config.to_dict(), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count()}
    report["m1_bits_per_byte"] = m1_bits_per_byte(m1, docs)
    schemes, timing = [], {}
    runs = [("equal_info", b, rule) for b in (16, 32) for rule in ("delay", "greedy")]
    runs += [("ac", None, None), ("static_ac", None, None), ("gzip", None, None), ("bytes", None, None)]
    counts = tuple(int(c) for c in np.bincount(np.frombuffer(b"".join(docs), np.uint8), minlength=256))
    report["delay_roundtrip_ok"] = True
    for scheme, b, rule in progress(runs, desc="schemes"):
        config = CodecConfig(scheme, vocab=65536, window_bits=b or 16, rule=rule or "delay",
                             static_counts=counts if scheme == "static_ac" else ())
        codec = build_codec(config, m1)
        start = time.perf_counter()
        encoded = codec.encode(docs)
        seconds = time.perf_counter() - start
        if (scheme, b, rule) == ("equal_info", 16, "delay"):
            timing["encode_bytes_per_s"] = total / seconds
        if rule == "delay":
            start = time.perf_counter()
            decoded = codec.decode([(e.tokens, len(d), e.windows) for e, d in zip(encoded, docs)])
            if b == 16:
                timing["decode_bytes_per_s"] = total / (time.perf_counter() - start)
            report["delay_roundtrip_ok"] &= decoded == docs
        windows = sum(e.windows for e in encoded)
        tokens16 = sum(len(e.tokens) for e in encoded)
        # Windows hold b/8 or b/16 tokens; a whole-document code padded to 16 bits is at most one
        # 8-bit token longer than padded to 8 bits (this overcounts v256 by <= 1 token per document).
        per_v = {256: 2 * tokens16, 65536: tokens16}
        paper = PAPER.get((scheme, b, rule), (None, None))
        for vocab, tokens in per_v.items():
            schemes.append({"scheme": scheme, "window_bits": b, "vocab": vocab, "rule": rule,
                            "bytes_per_token": total / max(1, tokens),
                            "undecodable_window_fraction": (sum(e.undecodable_windows for e in encoded)
                                                            / max(1, windows)) if scheme == "equal_info" else 0.0,
                            "paper_bytes_per_token": paper[0 if vocab == 256 else 1], "encode_s": seconds})
    sp = sentencepiece_bytes_per_token(docs, args.sp_vocab)
    if sp is not None:
        schemes.append({"scheme": "sentencepiece", "window_bits": None, "vocab": args.sp_vocab, "rule": None,
                        "bytes_per_token": sp, "undecodable_window_fraction": 0.0, "paper_bytes_per_token": 4.28})
    report["schemes"] = schemes
    m1_forward = torch_forward_bytes_per_s(args.m1, docs)
    report.update(timing, m1_forward_bytes_per_s=m1_forward,
                  encode_ratio_to_m1_forward=timing["encode_bytes_per_s"] / m1_forward,
                  decode_ratio_to_m1_forward=timing["decode_bytes_per_s"] / m1_forward,
                  coder_symbols_per_s=coder_symbols_per_s())
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["schemes"] if r["vocab"] == 65536 or r["scheme"] == "sentencepiece"]
    labels = [r["scheme"] + (f" b{r['window_bits']} {r['rule']}" if r["window_bits"] else "") for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(x - 0.2, [r["bytes_per_token"] for r in rows], 0.4, label="measured")
    ax.bar(x + 0.2, [r["paper_bytes_per_token"] or 0 for r in rows], 0.4, label="paper (C4)")
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel("bytes per token (v65k)")
    ax.set_title(f"M1 {report['m1_bits_per_byte']:.3f} bits/byte; encode {report['encode_ratio_to_m1_forward']:.2f}x "
                 f"M1 forward")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--m1", default=str(REPO / "runs" / "m1" / "export"), help="exported M1 directory")
    p.add_argument("--random-m1", action="store_true", help="use a random 2-layer M1 (smoke run)")
    p.add_argument("--quick", action="store_true", help="12 documents of 1,500 bytes")
    p.add_argument("--documents", type=int, default=40)
    p.add_argument("--doc-bytes", type=int, default=4000)
    p.add_argument("--sp-vocab", type=int, default=8000)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "equal_info.json")
    args = p.parse_args(argv)
    if args.quick:
        args.documents, args.doc_bytes = 12, 1500
    if not args.random_m1 and not (Path(args.m1) / "model.safetensors").is_file():
        raise SystemExit(f"error: no exported M1 in {args.m1}: make one (README, \"Equal-Info Windows\": train "
                         "configs/m1.yaml, then megacompress convert export), pass --m1 DIR, or --random-m1 for a "
                         "smoke run")
    try:
        report = run(args)
    except M1Error as exc:
        raise SystemExit(f"error: {exc}") from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    plot(report, args.out.with_suffix(".png"))
    for r in report["schemes"]:
        print(f"{r['scheme']:>13} b{r['window_bits'] or '-':<3} {r['rule'] or '-':>6} v{r['vocab']:<6} "
              f"{r['bytes_per_token']:6.2f} bytes/token (paper {r['paper_bytes_per_token']}) "
              f"undecodable {r['undecodable_window_fraction']:.4f}")
    print(f"M1 {report['m1_bits_per_byte']:.3f} bits/byte; delay round trip ok: {report['delay_roundtrip_ok']}; "
          f"encode {report['encode_bytes_per_s']:,.0f} B/s ({report['encode_ratio_to_m1_forward']:.3f}x M1 forward "
          f"{report['m1_forward_bytes_per_s']:,.0f} B/s), decode {report['decode_bytes_per_s']:,.0f} B/s "
          f"({report['decode_ratio_to_m1_forward']:.3f}x); coder {report['coder_symbols_per_s'] / 1e6:.1f} M symbols/s")
    print(f"wrote {args.out} and {args.out.with_suffix('.png').name}")


if __name__ == "__main__":
    main()
