"""``tools/compress_corpus.py``: a text corpus -> bitstream shards, resumable per partition.

Inputs and ``--json-keys`` are read as ``tools/preprocess_data.py`` reads them
(``megacompress.data.readers``); one shard per key, ``OUTPUT_PREFIX_{key}_document``.
Records with a problem (blank, invalid UTF-8 / JSON, a key missing or not a string) are
counted and skipped for every key, so document i of every key's shard is the same record.

Work is cut into ``--partitions`` contiguous byte ranges of the input; each becomes the
shard ``PREFIX.partNNNNN`` (written by one of ``--workers`` processes, each loading M1
once), committed by its ``meta.json`` (written last, atomically). A rerun skips committed
partitions made with the same codec and M1, then merges all partitions in input order into
``PREFIX`` and removes them. Documents are coded independently, so the output is
byte-identical for any worker or partition count.

On several machines (``tools/compress_slurm.py``: a SLURM job array), task I runs the same
flags with ``--partition-index I`` (compresses and commits partition I only, or finds it
committed) and one last job with ``--merge`` (merges; refuses, naming them, while any
partition is not committed). The partitions are planned from the input files alone, so
every task cuts the same ranges (an input too small for N partitions has fewer; a task
whose partition does not exist has nothing to do).
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from megacompress import cli
from megacompress.methods.equal_info.codec import M1_SCHEMES, SCHEMES, CodecConfig, CodecError, build_codec
from megacompress.methods.equal_info.shards import BitstreamShardWriter, read_meta, ShardMismatchError
from megacompress.data import readers
from megacompress.data.indexed import bin_path, idx_path
from megacompress.data.preprocess import shard_prefix
from megacompress.pools import worker_pool
from megacompress.progress import progress

BATCH_DOCUMENTS = 64  # documents handed to the codec at once (its rows stay busy)


@dataclass
class CompressConfig:
    """The CLI's flags: the codec (scheme, M1, b, v, rule, window cap), then the corpus and the work split."""

    scheme: str
    m1: str | None
    window_bits: int
    vocab: int
    rule: str
    max_window_bytes: int
    inputs: list[str]
    json_keys: list[str]
    output_prefix: str
    workers: int = 1
    partitions: int = 8
    chunk_bytes: int = 1 << 18
    partition_index: int | None = None  # compress this partition only (an array task); no merge
    merge: bool = False  # merge the committed partitions only


def record_documents(kind: str, payload, keys: list[str]) -> tuple[str | None, dict[str, bytes] | None]:
    """``(problem, {key: UTF-8 bytes})`` of one record; a missing, non-string or unencodable
    (lone surrogate) value of any key makes the whole record ``incomplete``."""
    problem, fields = readers.parse_record(kind, payload)
    if problem is not None:
        return problem, None
    docs = {}
    for key in keys:
        value = fields.get(None, fields.get(key))
        try:
            docs[key] = value.encode("utf-8")
        except (AttributeError, UnicodeEncodeError):
            return "incomplete", None
    return None, docs


def iter_documents(segments, keys: list[str], chunk_bytes: int, stats: Counter):
    """``{key: bytes}`` per usable record of ``segments``; problems are counted in ``stats``."""
    for chunk in readers.iter_chunks(segments, chunk_bytes):
        stats["records"] += len(chunk.records)
        for payload in chunk.records:
            problem, docs = record_documents(chunk.kind, payload, keys)
            if docs is None:
                stats[problem] += 1
            else:
                yield docs


def static_counts(files: list[str], keys: list[str], chunk_bytes: int) -> tuple[int, ...]:
    """Byte frequencies of the whole corpus (the static_ac model), in one pass over the input."""
    counts = np.zeros(256, np.int64)
    segments = [s for part in readers.plan_partitions(files, 1) for s in part]
    for docs in iter_documents(segments, keys, chunk_bytes, Counter()):
        for data in docs.values():
            counts += np.bincount(np.frombuffer(data, np.uint8), minlength=256)
    return tuple(int(c) for c in counts)


_WORKER: dict = {}


def _init_worker(codec_config: CodecConfig, m1_dir: str | None) -> None:
    from megacompress.methods.equal_info.m1 import M1

    m1 = M1(m1_dir) if codec_config.scheme in M1_SCHEMES else None
    _WORKER.update(codec=build_codec(codec_config, m1), config=codec_config, m1=m1)


def _part_prefix(prefix: str, part: int) -> str:
    return f"{prefix}.part{part:05d}"


def _committed(prefix: str, config: CodecConfig, m1_hash: str | None) -> bool:
    try:
        meta = read_meta(prefix)
    except ShardMismatchError:
        return False
    recorded = (meta.get("m1") or {}).get("hash")
    return meta["codec"] == config.to_dict() and recorded == m1_hash and os.path.exists(bin_path(prefix))


def _compress_partition(job) -> tuple[int, Counter, int]:
    part, segments, prefixes, keys, chunk_bytes = job
    codec, config, m1 = _WORKER["codec"], _WORKER["config"], _WORKER["m1"]
    stats: Counter = Counter()
    writers = {k: BitstreamShardWriter(prefixes[k], config) for k in keys}
    try:
        batch: list[dict[str, bytes]] = []
        documents = iter_documents(segments, keys, chunk_bytes, stats)
        while True:
            batch = [d for _, d in zip(range(BATCH_DOCUMENTS), documents)]
            if not batch:
                break
            for key in keys:
                texts = [d[key] for d in batch]
                for data, encoded in zip(texts, codec.encode(texts)):
                    writers[key].add(data, encoded)
        for key in keys:
            writers[key].finalize(None if m1 is None else m1.hash, None if m1 is None else str(m1.directory),
                                  {"skipped": dict(stats)})
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return part, stats, sum(s.end - s.start for s in segments)


def compress(cfg: CompressConfig) -> dict:
    """Compress the corpus; returns the summary (also printed by the CLI)."""
    from megacompress.methods.equal_info.m1 import m1_hash

    files = readers.expand_inputs(cfg.inputs)
    counts = static_counts(files, cfg.json_keys, cfg.chunk_bytes) if cfg.scheme == "static_ac" else ()
    config = CodecConfig(scheme=cfg.scheme, vocab=cfg.vocab, window_bits=cfg.window_bits, rule=cfg.rule,
                         max_window_bytes=cfg.max_window_bytes, static_counts=counts)
    if cfg.scheme in M1_SCHEMES and not cfg.m1:
        raise CodecError(f"--scheme {cfg.scheme} needs --m1 (an exported M1 directory)")
    hash_ = m1_hash(cfg.m1) if cfg.scheme in M1_SCHEMES else None
    finals = {k: shard_prefix(cfg.output_prefix, k) for k in cfg.json_keys}
    partitions = readers.plan_partitions(files, cfg.partitions)
    jobs, done_bytes = [], 0
    for p, segments in enumerate(partitions):
        if cfg.partition_index is not None and p != cfg.partition_index:
            continue
        prefixes = {k: _part_prefix(v, p) for k, v in finals.items()}
        if all(_committed(pre, config, hash_) for pre in prefixes.values()):
            done_bytes += sum(s.end - s.start for s in segments)  # resumed: committed earlier
        else:
            jobs.append((p, segments, prefixes, cfg.json_keys, cfg.chunk_bytes))
    if cfg.merge and jobs:
        raise CodecError(f"--merge: partitions {[j[0] for j in jobs]} of {len(partitions)} are not compressed "
                         f"(no committed {_part_prefix(next(iter(finals.values())), jobs[0][0])}.meta.json with "
                         "this codec and M1); run them with --partition-index first")
    if cfg.partition_index is None:
        total_bytes = sum(os.path.getsize(f) for f in files)
    else:
        total_bytes = sum(s.end - s.start for s in (partitions[cfg.partition_index]
                                                    if cfg.partition_index < len(partitions) else []))
    start = time.perf_counter()
    bar = progress(total=total_bytes, initial=done_bytes, desc=f"compress {cfg.scheme}", unit="B", unit_scale=True)
    with bar:
        if cfg.workers > 1 and len(jobs) > 1:
            with worker_pool(cfg.workers, _init_worker, (config, cfg.m1)) as pool:
                for _, _, nbytes in pool.imap_unordered(_compress_partition, jobs):
                    bar.update(nbytes)
        elif jobs:
            _init_worker(config, cfg.m1)
            for job in jobs:
                bar.update(_compress_partition(job)[2])
    seconds = time.perf_counter() - start
    summary = {"scheme": cfg.scheme, "codec": {k: v for k, v in config.to_dict().items() if k != "static_counts"},
               "resumed_partitions": len(partitions) - len(jobs), "partitions": len(partitions), "keys": {}}
    if cfg.partition_index is not None:  # one partition of several: the --merge job writes the shards
        return {**summary, "partition_index": cfg.partition_index, "seconds": seconds, "bytes_in": total_bytes,
                "compressed": bool(jobs), "resumed_partitions": int(not jobs and cfg.partition_index < len(partitions))}
    for key, final in finals.items():
        parts = [_part_prefix(final, p) for p in range(len(partitions))]
        skipped: Counter = Counter()
        writer = BitstreamShardWriter(final, config)
        for part in parts:
            writer.merge(part)
            skipped.update(read_meta(part).get("skipped", {}))
        meta = writer.finalize(hash_, cfg.m1, {"inputs": files, "skipped": dict(skipped), "json_key": key})
        for part in parts:
            for path in (bin_path(part), idx_path(part), bin_path(part + ".docs"), idx_path(part + ".docs"),
                         f"{part}.meta.json"):
                if os.path.exists(path):
                    os.remove(path)
        c = meta["counts"]
        summary["keys"][key] = {**c, "prefix": final, "bytes_per_token": c["bytes"] / max(1, c["tokens"])}
    summary["seconds"] = seconds
    summary["bytes_in"] = sum(v["bytes"] for v in summary["keys"].values())
    summary["tokens_out"] = sum(v["tokens"] for v in summary["keys"].values())
    return summary


def format_summary(s: dict) -> str:
    rate = s["bytes_in"] / max(s["seconds"], 1e-9)
    if "partition_index" in s:
        i, n = s["partition_index"], s["partitions"]
        if i >= n:
            return f"partition {i}: the input makes only {n} partition(s); nothing to do"
        done = (f"compressed {s['bytes_in']:,} input bytes in {s['seconds']:.2f} s ({rate / 1e3:,.1f} kB/s)"
                if s["compressed"] else "already committed (resumed)")
        return f"partition {i} of {n}: {done}; run --merge after every partition"
    lines = [f"[{k}] {v['documents']} documents -> {v['prefix']}; windows {v['windows']}, undecodable windows "
             f"{v['undecodable_windows']} ({v['undecodable_documents']} documents)" for k, v in s["keys"].items()]
    lines.append(f"done: {s['bytes_in']:,} bytes in, {s['tokens_out']:,} tokens out, "
                 f"{s['bytes_in'] / max(1, s['tokens_out']):.3f} bytes/token, {s['seconds']:.2f} s "
                 f"({rate / 1e3:,.1f} kB/s; {s['resumed_partitions']} of {s['partitions']} partitions resumed)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("megacompress.methods.equal_info.compress", __doc__.split("\n")[0], script="tools/compress_corpus.py")
    p.add_argument("--input", nargs="+", required=True, help="files or globs (.jsonl, .json, .parquet, .txt)")
    p.add_argument("--output-prefix", required=True, help="shards go to OUTPUT_PREFIX_{key}_document")
    p.add_argument("--scheme", choices=SCHEMES, default="equal_info",
                   help="equal_info: M1 + arithmetic coding in fixed-bit windows; ac: one M1 code per document; "
                        "static_ac, gzip, bytes: baselines")
    p.add_argument("--m1", help="exported M1 directory (model.safetensors + config.json); equal_info and ac")
    p.add_argument("--window-bits", type=int, default=16, help="b: code bits per Equal-Info window (default 16)")
    p.add_argument("--vocab", type=int, choices=(256, 65536), default=65536, help="v: token vocabulary")
    p.add_argument("--rule", choices=("delay", "greedy"), default="delay", help="window rule (default delay)")
    p.add_argument("--max-window-bytes", type=int, default=256, help="cap on the bytes of one window")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="fields to compress (default text)")
    p.add_argument("--workers", type=int, default=1, help="processes (each loads M1 once)")
    p.add_argument("--partitions", type=int, default=8, help="resumable units of work (default 8)")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--partition-index", type=int, default=None, metavar="I",
                       help="compress partition I of --partitions only, no merge (a SLURM array task: "
                            "tools/compress_slurm.py)")
    split.add_argument("--merge", action="store_true",
                       help="merge the partitions the --partition-index runs committed into the shards")
    return p


def main(argv: list[str] | None = None) -> dict:
    a = build_parser().parse_args(argv)
    cfg = CompressConfig(inputs=a.input, output_prefix=a.output_prefix, scheme=a.scheme, m1=a.m1,
                         window_bits=a.window_bits, vocab=a.vocab, rule=a.rule, max_window_bytes=a.max_window_bytes,
                         json_keys=a.json_keys, workers=a.workers, partitions=a.partitions,
                         partition_index=a.partition_index, merge=a.merge)
    if a.partition_index is not None and not 0 <= a.partition_index < a.partitions:
        raise CodecError(f"--partition-index {a.partition_index} is not in [0, --partitions {a.partitions})")
    summary = compress(cfg)
    print(format_summary(summary), flush=True)
    return summary
