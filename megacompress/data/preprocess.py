"""Pack a text corpus into Megatron ``.bin/.idx`` shards: ``python -m megacompress.data.preprocess``.

For each ``--json-keys`` key K the output is the shard ``{output_prefix}_{K}_document``
(Megatron's naming) with one sequence per document, plus
``{shard}.meta.json`` and, with ``--split-sentences``, the sidecar shard
``{shard}.eos.bin/.idx`` (int32; sequence i = the offsets, inside document i, of its
``<|endofsentence|>`` tokens) and the sentence model ``{shard}.sentences.json``.

Alignment. Document i of every key's shard comes from the same input record. A
record is kept only if every key holds a string that encodes; otherwise it is
skipped for all keys (counted as ``incomplete``, and per key as ``missing_key``,
``non_string`` or ``invalid_unicode``). An empty string is kept as an empty
document (zero tokens, no EOD even with ``--append-eod``, as Megatron's
``preprocess_data.py`` writes it), counted per key as ``empty_documents``.

Pipeline: the parent reads ordered chunks of records (readers.py), a multiprocessing
pool tokenizes them (at most ``2 * workers`` chunks in flight, so memory stays
constant), and the parent writes results in input order. Chunking does not depend
on ``--workers`` and ``--partitions`` only splits the stream into contiguous pieces
that are merged back in order, so the shards are byte-identical for any value of
either. ``--partition-index I`` packs one partition alone (N machines or array tasks
pack one each) and ``--merge`` joins them: see `partition_merge`. With
``--split-sentences`` the Punkt splitter is trained once, in the parent, on the first
``--sentence-train-chars`` characters of the first key's text (or loaded from
``--sentence-model``, e.g. the train shard's ``.sentences.json``, so that every split
of a corpus is cut by one model), and its parameters are shipped to the workers. Its
JSON is saved beside each shard and its sha256 recorded in ``meta.json``.

Bad records are never dropped silently: blank lines, invalid UTF-8, invalid JSON,
non-object lines, missing keys, non-string values and invalid text are counted in
the final summary and in ``meta.json``, and so are empty texts (kept as empty documents).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field as dc_field
from pathlib import Path

import numpy as np

from megacompress import cli
from megacompress.atomic import write_text_atomic
from megacompress.data import partition_merge as pm
from megacompress.data import readers
from megacompress.data.index_cache import file_records
from megacompress.data.indexed import DTYPE_CODES, IndexedDatasetWriter, best_dtype, cast_tokens
from megacompress.data.tokenizers import TOKENIZER_KINDS, build_tokenizer, encode_pieces
from megacompress.errors import UserError
from megacompress.pools import worker_pool
from megacompress.progress import progress

# Record-level reasons to skip a record (for every key); "incomplete": some key was unusable.
RECORD_PROBLEMS = ("blank_line", "invalid_utf8", "invalid_json", "not_an_object", "incomplete")
# Per key: why that key made its record incomplete.
KEY_PROBLEMS = ("missing_key", "non_string", "invalid_unicode")
KEY_COUNTS = ("documents", "tokens", "sentences", "empty_documents", *KEY_PROBLEMS)
SENTENCE_MODEL_SUFFIX = ".sentences.json"


class PreprocessError(UserError, ValueError):
    """A preprocessing request that cannot work (bad flags, a dtype too small)."""


@dataclass
class PreprocessConfig:
    inputs: list[str]
    output_prefix: str
    tokenizer: str = "gpt2"
    tokenizer_model: str | None = None
    json_keys: list[str] = dc_field(default_factory=lambda: ["text"])
    workers: int = 1
    partitions: int = 1
    partition_index: int | None = None  # pack only this partition of ``partitions`` (merge later)
    merge: bool = False  # join the finished partitions of an earlier ``partition_index`` run
    append_eod: bool = False
    split_sentences: bool = False
    dtype: str | None = None  # default: smallest that fits the vocabulary
    chunk_bytes: int = 256 << 10
    sentence_train_chars: int = 1_000_000
    sentence_model: str | None = None  # a saved .sentences.json to reuse instead of training


def shard_prefix(output_prefix: str, key: str) -> str:
    return f"{output_prefix}_{key}_document"


# ---------------------------------------------------------------- worker side

_STATE: dict = {}


def _init_worker(tokenizer: str, tokenizer_model: str | None, keys: list[str], append_eod: bool, punkt_params,
                 dtype: str) -> None:
    tok = _STATE.get("tokenizer")
    if tok is None or (tok.name, getattr(tok, "model_path", None)) != (tokenizer, tokenizer_model):
        tok = build_tokenizer(tokenizer, tokenizer_model)
    _STATE.update(
        tokenizer=tok,
        keys=keys,
        append_eod=append_eod,
        splitter=_make_splitter(punkt_params) if punkt_params is not None else None,
        eos=tok.special_id("eos") if punkt_params is not None else None,  # an hf vocabulary may lack it
        dtype=np.dtype(dtype),
    )


def _make_splitter(punkt_params):
    from megacompress.data.sentences import SentenceSplitter  # NLTK import costs ~1 s; only when splitting

    return SentenceSplitter(punkt_params)


@dataclass
class KeyResult:
    """One chunk's output for one key: documents concatenated."""

    tokens: np.ndarray  # shard dtype [sum(doc_lengths)]
    doc_lengths: np.ndarray  # int64 [documents]
    eos_offsets: np.ndarray  # int32 [sum(eos_counts)], offsets inside each document
    eos_counts: np.ndarray  # int64 [documents]


def _encode_document(text: str) -> tuple[list[int], list[int]]:
    tok, splitter = _STATE["tokenizer"], _STATE["splitter"]
    offsets: list[int] = []
    if splitter is None:
        ids = tok.encode(text)
    else:
        ids = []
        for sentence in encode_pieces(tok, splitter.split(text)):
            ids.extend(sentence)
            offsets.append(len(ids))
            ids.append(_STATE["eos"])
    if _STATE["append_eod"]:
        ids.append(tok.eod)
    return ids, offsets


def _encode_record(fields: dict) -> tuple[dict[str, tuple[list[int], list[int]]], list[tuple[str, str]]]:
    """Every key's ``(ids, eos_offsets)``, and the ``(key, problem)`` pairs that make the record unusable.

    An empty string is a valid, empty document (no tokens, not even EOD).
    """
    encoded, problems = {}, []
    for key in _STATE["keys"]:
        try:
            value = readers.field(fields, key)
        except KeyError:
            problems.append((key, "missing_key"))
            continue
        if not isinstance(value, str):
            problems.append((key, "non_string"))
            continue
        try:
            encoded[key] = _encode_document(value) if value else ([], [])
        except ValueError:  # lone surrogates from a JSON "\ud800" escape
            problems.append((key, "invalid_unicode"))
    return encoded, problems


def process_chunk(chunk: readers.Chunk) -> tuple[dict[str, KeyResult], Counter]:
    """Tokenize one chunk; returns per-key results (one document per kept record) and counters."""
    stats: Counter = Counter()
    out = {k: ([], [], [], []) for k in _STATE["keys"]}
    for payload in chunk.records:
        stats["records"] += 1
        problem, fields = readers.parse_record(chunk.kind, payload)
        if problem is not None:
            stats[problem] += 1
            continue
        encoded, problems = _encode_record(fields)
        if problems:  # skipped for every key, so document i of each shard is the same record
            stats["incomplete"] += 1
            stats.update(f"{key}/{name}" for key, name in problems)
            continue
        for key, (ids, offsets) in encoded.items():
            stats[f"{key}/empty_documents"] += not ids
            tokens, lengths, eos, counts = out[key]
            tokens.extend(ids)
            lengths.append(len(ids))
            eos.extend(offsets)
            counts.append(len(offsets))
    results = {
        key: KeyResult(
            # Cast to the shard dtype here, once per chunk: 2-byte ids cross the process
            # boundary instead of 8-byte ones, and the parent only writes them.
            cast_tokens(np.asarray(t, dtype=np.int64), _STATE["dtype"], f"chunk of {chunk.path}"),
            np.asarray(l, dtype=np.int64),
            np.asarray(e, dtype=np.int32),
            np.asarray(c, dtype=np.int64),
        )
        for key, (t, l, e, c) in out.items()
    }
    return results, stats


def _ordered_map(pool, fn, items, window: int):
    """``pool.imap`` with at most ``window`` tasks in flight (imap would read all input ahead)."""
    pending: deque = deque()
    for item in items:
        pending.append((item, pool.apply_async(fn, (item,))))
        if len(pending) >= window:
            done_item, res = pending.popleft()
            yield done_item, res.get()
    while pending:
        done_item, res = pending.popleft()
        yield done_item, res.get()


# ---------------------------------------------------------------- parent side


def _sentence_splitter(cfg: PreprocessConfig, files: list[str]):
    """``(splitter, trained_chars)``: loaded from ``--sentence-model`` (0 chars) or trained on the input."""
    if cfg.sentence_model is not None:
        from megacompress.data.sentences import SentenceSplitter

        return SentenceSplitter.load(cfg.sentence_model), 0
    return _train_splitter(files, cfg.json_keys[0], cfg.sentence_train_chars)


def _train_splitter(files: list[str], key: str, max_chars: int):
    from megacompress.data.sentences import SentenceSplitter

    texts, total = [], 0
    for chunk in readers.iter_chunks(readers.plan_partitions(files, 1)[0], 1 << 20):
        for payload in chunk.records:
            _, fields = readers.parse_record(chunk.kind, payload)
            value = None
            if fields is not None:
                try:
                    value = readers.field(fields, key)
                except KeyError:
                    pass
            if isinstance(value, str) and value:
                texts.append(value[: max_chars - total])
                total += len(texts[-1])
            if total >= max_chars:
                return SentenceSplitter.train(texts), total
    return SentenceSplitter.train(texts), total


def _resolve_dtype(name: str | None, vocab_size: int) -> np.dtype:
    if name is None:
        return best_dtype(vocab_size)
    dtype = np.dtype(name)
    if dtype not in DTYPE_CODES.values() or dtype.kind not in "iu":
        raise PreprocessError(f"--dtype {name}: not an integer Megatron dtype")
    if np.iinfo(dtype).max < vocab_size - 1:
        raise PreprocessError(f"--dtype {name}: cannot hold token ids up to {vocab_size - 1}")
    return dtype


class _KeyOutput:
    """Main writer (+ optional EOS sidecar writer) of one key in one partition."""

    def __init__(self, prefix: str, dtype: np.dtype, with_eos: bool) -> None:
        self.main = IndexedDatasetWriter(prefix, dtype)
        self.eos = IndexedDatasetWriter(prefix + ".eos", np.int32) if with_eos else None

    def write(self, r: KeyResult) -> None:
        doc_ends = np.cumsum(r.doc_lengths)
        eos_ends = np.cumsum(r.eos_counts)
        for d in range(len(r.doc_lengths)):
            start = doc_ends[d] - r.doc_lengths[d]
            self.main.add_document(r.tokens[start : doc_ends[d]])
            if self.eos is not None:
                self.eos.add_document(r.eos_offsets[eos_ends[d] - r.eos_counts[d] : eos_ends[d]])

    def writers(self):
        return [w for w in (self.main, self.eos) if w is not None]


def preprocess(cfg: PreprocessConfig) -> dict:
    """Run the whole pipeline (or one partition, or the merge); returns the summary (also
    written into each meta.json)."""
    t0 = time.perf_counter()
    files = readers.expand_inputs(cfg.inputs)
    _check_output_prefix(cfg.output_prefix)
    tok = build_tokenizer(cfg.tokenizer, cfg.tokenizer_model)
    _STATE["tokenizer"] = tok
    dtype = _resolve_dtype(cfg.dtype, tok.vocab_size)
    if cfg.workers < 1 or cfg.partitions < 1:
        raise PreprocessError("--workers and --partitions must be >= 1")
    if len(set(cfg.json_keys)) != len(cfg.json_keys):
        raise PreprocessError(f"--json-keys has duplicates: {cfg.json_keys}")
    if cfg.sentence_model is not None and not cfg.split_sentences:
        raise PreprocessError("--sentence-model is only used with --split-sentences")
    pm.check_index(cfg.partition_index, cfg.partitions, cfg.merge)
    if cfg.merge:
        return _merge(cfg, files, tok, dtype, t0)

    punkt_params, trained_chars, model_json = None, 0, None
    if cfg.split_sentences:
        splitter, trained_chars = _sentence_splitter(cfg, files)
        model_json = splitter.to_json()  # before any splitting touches the parameters
        punkt_params = splitter.params

    # Partition p of N covers the same input wherever it is packed (an input too small for
    # N non-empty partitions leaves the last ones empty).
    partitions = readers.plan_partitions(files, cfg.partitions)
    partitions += [[] for _ in range(cfg.partitions - len(partitions))]
    todo = range(cfg.partitions) if cfg.partition_index is None else [cfg.partition_index]
    direct = cfg.partitions == 1  # one partition goes straight into the final shard
    total_bytes = sum(seg.end - seg.start for p in todo for seg in partitions[p])
    init_args = (cfg.tokenizer, cfg.tokenizer_model, cfg.json_keys, cfg.append_eod, punkt_params, dtype.name)
    _init_worker(*init_args)
    pool = None
    if cfg.workers > 1:
        pool = worker_pool(cfg.workers, _init_worker, init_args)

    stats: Counter = Counter()
    started: list[int] = []
    try:
        bar = progress(total=total_bytes, unit="B", unit_scale=True, desc="preprocess")
        for p in todo:
            started.append(p)
            part_stats = _pack(cfg, partitions[p], _part_shards(cfg, p, direct), dtype, pool, bar)
            stats.update(part_stats)
            if not direct:
                pm.write_record(cfg.output_prefix, p, cfg.partitions, _settings(cfg, files, tok, dtype),
                                dict(part_stats), trained_chars, model_json)
        bar.close()
    except BaseException:
        if not direct:
            pm.remove_partitions(cfg.output_prefix, cfg.partitions, started,
                                 [_part_files(cfg, p) for p in started])
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()

    if cfg.partition_index is not None:  # one partition of several: --merge writes the shards' meta
        return _summary(cfg, files, stats, total_bytes, time.perf_counter() - t0, trained_chars)
    if not direct:
        return _merge(cfg, files, tok, dtype, t0)
    summary = _summary(cfg, files, stats, total_bytes, time.perf_counter() - t0, trained_chars)
    _require_documents(cfg, files, summary)
    _write_meta(cfg, tok, dtype, files, summary, trained_chars, model_json)
    return summary


def _check_output_prefix(prefix: str) -> None:
    """Refuse, before any work, a prefix whose directory cannot be made: a file on its way."""
    parent = os.path.dirname(os.path.abspath(prefix))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise readers.InputError(f"--output-prefix {prefix}: {parent} is a file, not a directory")


def _pack(cfg: PreprocessConfig, segments, names: dict[str, str], dtype, pool, bar) -> Counter:
    """Tokenize ``segments`` into the shards ``names`` (one per key); returns the counts."""
    stats: Counter = Counter()
    outs = {key: _KeyOutput(name, dtype, cfg.split_sentences) for key, name in names.items()}
    try:
        chunks = readers.iter_chunks(segments, cfg.chunk_bytes)
        results = (
            _ordered_map(pool, process_chunk, chunks, 2 * cfg.workers)
            if pool is not None
            else ((c, process_chunk(c)) for c in chunks)
        )
        for chunk, (per_key, chunk_stats) in results:
            stats.update(chunk_stats)
            for key, r in per_key.items():
                outs[key].write(r)
                stats[f"{key}/documents"] += len(r.doc_lengths)
                stats[f"{key}/tokens"] += int(r.doc_lengths.sum())
                stats[f"{key}/sentences"] += int(r.eos_counts.sum())
            bar.update(chunk.nbytes)
        for out in outs.values():
            for w in out.writers():
                w.finalize()
    except BaseException:
        for out in outs.values():
            for w in out.writers():
                w.abort()
        raise
    return stats


def _part_shards(cfg: PreprocessConfig, index: int, direct: bool = False) -> dict[str, str]:
    """Partition ``index``'s shard prefix of every key (the final shards when ``direct``)."""
    suffix = "" if direct else pm.part_suffix(index, cfg.partitions)
    return {key: shard_prefix(cfg.output_prefix, key) + suffix for key in cfg.json_keys}


def _part_files(cfg: PreprocessConfig, index: int) -> list[str]:
    """Every shard prefix (main and ``.eos``) partition ``index`` writes."""
    suffixes = [""] + ([".eos"] if cfg.split_sentences else [])
    return [name + s for name in _part_shards(cfg, index).values() for s in suffixes]


def _settings(cfg: PreprocessConfig, files: list[str], tok, dtype: np.dtype) -> dict:
    """What makes partitions fit together: a merge refuses one packed with other settings."""
    return {
        "tokenizer": tok.name,
        "tokenizer_fingerprint": tok.fingerprint(),
        "dtype": dtype.name,
        "json_keys": cfg.json_keys,
        "append_eod": cfg.append_eod,
        "split_sentences": cfg.split_sentences,
        "sentence_train_chars": cfg.sentence_train_chars if cfg.split_sentences and not cfg.sentence_model else None,
        "sentence_model": os.path.abspath(cfg.sentence_model) if cfg.sentence_model else None,
        "inputs": [[os.path.abspath(f), os.path.getsize(f)] for f in files],
    }


def _merge(cfg: PreprocessConfig, files: list[str], tok, dtype: np.dtype, t0: float) -> dict:
    """Join the finished partitions into the final shards (+ meta.json), then delete them."""
    count = cfg.partitions
    records = pm.read_records(cfg.output_prefix, count, _settings(cfg, files, tok, dtype),
                              [_part_files(cfg, p) for p in range(count)])
    for key in cfg.json_keys:
        for suffix in [""] + ([".eos"] if cfg.split_sentences else []):
            parts = [_part_shards(cfg, p)[key] + suffix for p in range(count)]
            pm.merge_shards(shard_prefix(cfg.output_prefix, key) + suffix, parts, np.int32 if suffix else dtype)
    trained_chars, model_json = records[0]["trained_chars"], records[0]["sentence_model"]
    total_bytes = sum(os.path.getsize(p) for p in files)
    summary = _summary(cfg, files, Counter(pm.merged_stats(records)), total_bytes, time.perf_counter() - t0,
                       trained_chars)
    pm.remove_partitions(cfg.output_prefix, count, range(count), [_part_files(cfg, p) for p in range(count)])
    _require_documents(cfg, files, summary)
    _write_meta(cfg, tok, dtype, files, summary, trained_chars, model_json)
    return summary


def _require_documents(cfg: PreprocessConfig, files: list[str], summary: dict) -> None:
    """A run that wrote no document is an error, and keeps no shard that could look usable."""
    if summary["keys"][cfg.json_keys[0]]["documents"]:  # every key has the same count (aligned)
        return
    for key in cfg.json_keys:
        prefix = shard_prefix(cfg.output_prefix, key)
        for suffix in (".bin", ".idx", ".eos.bin", ".eos.idx"):
            Path(prefix + suffix).unlink(missing_ok=True)
    raise readers.InputError(f"no document written, so no shard was kept ({', '.join(files)}: "
                             + _format_summary(summary).replace("\n", "; ") + ")")


def _write_meta(cfg: PreprocessConfig, tok, dtype: np.dtype, files: list[str], summary: dict, trained_chars: int,
                model_json: str | None) -> None:
    """Every key's ``meta.json`` (and sentence model, when splitting)."""
    model_digest = None
    if model_json is not None:
        from megacompress.data.sentences import sentence_model_digest  # NLTK import; only when splitting

        model_digest = sentence_model_digest(model_json)
    for key in cfg.json_keys:
        prefix = shard_prefix(cfg.output_prefix, key)
        if model_json is not None:
            write_text_atomic(prefix + SENTENCE_MODEL_SUFFIX, model_json)
        meta = _shard_meta(cfg, key, tok, dtype, files, summary, trained_chars, model_digest)
        write_text_atomic(prefix + ".meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _shard_meta(cfg: PreprocessConfig, key: str, tok, dtype: np.dtype, files: list[str], summary: dict,
                trained_chars: int, model_digest: str | None) -> dict:
    """The ``meta.json`` content of key ``key``'s shard (layout in docs/data.md)."""
    prefix = shard_prefix(cfg.output_prefix, key)
    name = os.path.basename(prefix)
    return {
        "shard": name,
        "json_key": key,
        "tokenizer": {
            "name": tok.name,
            "model": os.path.basename(cfg.tokenizer_model) if cfg.tokenizer_model else None,
            "fingerprint": tok.fingerprint(),
            "vocab_size": tok.vocab_size,
            "special_ids": tok.special_ids,
        },
        "dtype": dtype.name,
        "flags": {
            "append_eod": cfg.append_eod,
            "split_sentences": cfg.split_sentences,
            "json_keys": cfg.json_keys,
            "sentence_train_chars": trained_chars if cfg.split_sentences and cfg.sentence_model is None else None,
        },
        "sentence_model": None if model_digest is None else {
            "file": name + SENTENCE_MODEL_SUFFIX,
            "sha256": model_digest,
            "loaded_from": os.path.basename(cfg.sentence_model) if cfg.sentence_model else None,
        },
        "inputs": [os.path.basename(f) for f in files],
        "eos_sidecar": name + ".eos" if cfg.split_sentences else None,
        "counts": summary["keys"][key] | {"records": summary["records"]},
        # size + sha256 of the token files: same-size corruption of a received shard is caught
        "files": file_records(prefix, [".bin", ".idx"] + ([".eos.bin", ".eos.idx"] if cfg.split_sentences else [])),
    }


def _summary(cfg, files, stats: Counter, total_bytes: int, seconds: float, trained_chars: int) -> dict:
    keys = {key: {name: stats[f"{key}/{name}"] for name in KEY_COUNTS} for key in cfg.json_keys}
    return {
        "files": len(files),
        "bytes": total_bytes,
        "seconds": seconds,
        "records": {name: stats[name] for name in ("records", *RECORD_PROBLEMS)},
        "keys": keys,
    }


def _format_summary(summary: dict) -> str:
    lines = []
    rec = summary["records"]
    mb = summary["bytes"] / 1e6
    secs = max(summary["seconds"], 1e-9)
    skipped = ", ".join(f"{k} {v}" for k, v in rec.items() if k != "records")
    lines.append(f"records {rec['records']} ({skipped})")
    for key, c in summary["keys"].items():
        problems = ", ".join(f"{k} {c[k]}" for k in KEY_PROBLEMS)
        lines.append(f"[{key}] empty documents {c['empty_documents']}; records made incomplete by: {problems}")
    docs = sum(c["documents"] for c in summary["keys"].values())
    tokens = sum(c["tokens"] for c in summary["keys"].values())
    lines.append(
        f"done: {docs} documents, {tokens} tokens, {mb:.2f} MB in {secs:.2f} s "
        f"({mb / secs:.2f} MB/s, {tokens / secs:,.0f} tokens/s)"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("megacompress.data.preprocess", "Tokenize a corpus into Megatron-compatible .bin/.idx shards "
                   "(one per --json-keys key: OUTPUT_PREFIX_{key}_document).", script="tools/preprocess_data.py")
    p.add_argument("--input", nargs="+", required=True, help="files or globs: .jsonl, .json, .parquet, .txt (one document per .txt file)")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="keys to pack, one output shard each (default: text)")
    p.add_argument("--tokenizer", choices=TOKENIZER_KINDS, default="gpt2", help="tokenizer kind (default: gpt2)")
    p.add_argument("--tokenizer-model", help="SentencePiece .model file (for --tokenizer sentencepiece)")
    p.add_argument("--output-prefix", required=True, help="output path prefix")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (default: 1)")
    p.add_argument("--partitions", type=int, default=1, help="process the input as N contiguous partitions, then merge (default: 1)")
    p.add_argument("--partition-index", type=int, metavar="I", help="pack only partition I of --partitions N (one per machine or array task); then run --merge")
    p.add_argument("--merge", action="store_true", help="join the finished partitions of --partitions N into the final shards (same flags as the partitions)")
    p.add_argument("--append-eod", action="store_true", help="append the end-of-document token to every document")
    p.add_argument("--split-sentences", action="store_true", help="append <|endofsentence|> after every sentence and write the OUTPUT.eos sidecar")
    p.add_argument("--dtype", choices=sorted(d.name for d in DTYPE_CODES.values() if d.kind in "iu"), help="token dtype (default: uint16 if the vocabulary fits, else int32)")
    p.add_argument("--chunk-bytes", type=int, default=PreprocessConfig.chunk_bytes, help="input bytes per worker task (default: %(default)s)")
    p.add_argument("--sentence-train-chars", type=int, default=PreprocessConfig.sentence_train_chars, help="characters of text to train the sentence splitter on (default: %(default)s)")
    p.add_argument("--sentence-model", help="reuse a saved sentence model (e.g. the train shard's .sentences.json) instead of training one")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = PreprocessConfig(
        inputs=args.input,
        output_prefix=args.output_prefix,
        tokenizer=args.tokenizer,
        tokenizer_model=args.tokenizer_model,
        json_keys=args.json_keys,
        workers=args.workers,
        partitions=args.partitions,
        partition_index=args.partition_index,
        merge=args.merge,
        append_eod=args.append_eod,
        split_sentences=args.split_sentences,
        dtype=args.dtype,
        chunk_bytes=args.chunk_bytes,
        sentence_train_chars=args.sentence_train_chars,
        sentence_model=args.sentence_model,
    )
    summary = preprocess(cfg)
    print(_format_summary(summary))
    return summary


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
