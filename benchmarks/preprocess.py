"""Preprocessing throughput and memory: ``python benchmarks/preprocess.py``.

Packs ``../shared/data/corpus/train.jsonl`` (relative to the repository root) with
GPT-2 and ``--append-eod``: the corpus repeated ``--repeat`` times (default 8, ~67 MB,
so that the ~1 s of fixed start-up cost does not dominate) with 1 and 2 workers, and the
corpus once with 1 worker (peak memory must not grow with corpus size). Each run is a separate
``python -m megacompress.data.preprocess`` process; peak RSS is the largest sum of
RSS over that process and its children, sampled every 20 ms. The baseline is a
plain single-process loop (``json.loads`` + ``encode``) over the same documents.
Writes ``benchmarks/results/preprocess.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from megacompress.atomic import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / ".." / "shared" / "data" / "corpus" / "train.jsonl"
RESULTS = REPO / "benchmarks" / "results"


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_preprocess(corpus: Path, workers: int, out_dir: str) -> dict:
    cmd = [
        sys.executable, "-m", "megacompress.data.preprocess", "--input", str(corpus),
        "--output-prefix", os.path.join(out_dir, f"w{workers}"), "--tokenizer", "gpt2",
        "--append-eod", "--workers", str(workers),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(ps))
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    out = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"preprocess failed ({proc.returncode}): {' '.join(cmd)}")
    meta = json.load(open(os.path.join(out_dir, f"w{workers}_text_document.meta.json")))
    tokens = meta["counts"]["tokens"]
    mb = corpus.stat().st_size / 1e6
    return {
        "corpus_mb": mb, "workers": workers, "seconds": seconds, "tokens": tokens,
        "tokens_per_s": tokens / seconds, "mb_per_s": mb / seconds, "peak_rss_mb": peak / 1e6,
        "summary_line": out.strip().splitlines()[-1],
    }


def plain_loop(corpus: Path) -> dict:
    from megacompress.data.tokenizers import build_tokenizer

    start = time.perf_counter()
    tok = build_tokenizer("gpt2")
    tokens = 0
    with open(corpus) as f:
        for line in f:
            tokens += len(tok.encode(json.loads(line)["text"])) + 1
    seconds = time.perf_counter() - start
    mb = corpus.stat().st_size / 1e6
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds, "mb_per_s": mb / seconds}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    labels = ["plain loop"] + [f"{r['workers']}w, {r['corpus_mb']:.1f} MB" for r in runs]
    speeds = [results["plain_loop"]["mb_per_s"]] + [r["mb_per_s"] for r in runs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.bar(labels, speeds, color="tab:blue")
    a.set_ylabel("MB/s")
    a.set_title("GPT-2 preprocessing throughput")
    b.bar(labels[1:], [r["peak_rss_mb"] for r in runs], color="tab:orange")
    b.set_ylabel("peak RSS, parent + workers (MB)")
    b.set_title("memory")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="jsonl corpus (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=8, help="corpus copies for the throughput runs (default 8)")
    args = parser.parse_args(argv)
    if not args.corpus.is_file():
        print(f"skipping: corpus {args.corpus} not found")
        return
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / f"corpus_x{args.repeat}.jsonl"
        data = args.corpus.read_bytes()
        with open(big, "wb") as f:
            for _ in range(args.repeat):
                f.write(data)
        del data
        runs = [run_preprocess(big, 1, tmp), run_preprocess(big, 2, tmp)]
        runs.append(run_preprocess(args.corpus, 1, str(Path(tmp) / "once")))
        baseline = plain_loop(big)
    results = {
        "corpus": str(args.corpus), "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
        "runs": runs, "plain_loop": baseline,
        "speedup_2_vs_1_workers": runs[0]["seconds"] / runs[1]["seconds"],
        "ratio_1_worker_vs_plain_loop": runs[0]["tokens_per_s"] / baseline["tokens_per_s"],
        "ratio_2_workers_vs_plain_loop": runs[1]["tokens_per_s"] / baseline["tokens_per_s"],
        f"peak_rss_ratio_x{args.repeat}_vs_x1": runs[0]["peak_rss_mb"] / runs[2]["peak_rss_mb"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "preprocess.json", json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "preprocess.png")
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))
    for r in runs:
        print(f"{r['workers']} worker(s), {r['corpus_mb']:.1f} MB: {r['summary_line']}; peak RSS {r['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
