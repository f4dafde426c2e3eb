"""Corpus reading for preprocessing: input expansion, partitions, ordered chunks of records.

Input formats (by extension):

``.jsonl``
    One JSON object per line, read line by line in binary (constant memory). Each
    line is checked on its own, so one bad line (invalid UTF-8, invalid JSON, not an
    object) is counted and skipped instead of failing the whole file.
``.json``
    JSON lines as above, or, when the first non-blank byte is ``[``, an array of
    objects read with ``datasets.load_dataset("json", streaming=True)``.
``.parquet``
    Rows read with ``datasets.load_dataset("parquet", streaming=True)``.
``.txt``
    The whole file is ONE document (a book, an article) under every ``--json-keys``
    key's name — not one document per line as ``datasets``' text loader would do.

A *chunk* is a run of consecutive records of one file (about ``chunk_bytes`` of
input). Chunks are cut by the reader alone, never by the number of workers, so the
output of preprocessing does not depend on ``--workers``. Partitions are contiguous
byte ranges of the input (``.jsonl`` and line-based ``.json`` files are cut at line
starts; other files go whole to one partition); concatenating the partitions'
records in order gives exactly the unpartitioned record stream.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

from megacompress.errors import UserError

SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".parquet", ".txt")

# Record payload kinds.
LINE = "line"  # bytes of one JSON line
TEXT_FILE = "txt"  # bytes of a whole .txt file
ROW = "row"  # a dict from datasets


class InputError(UserError, ValueError):
    """An input path is missing, matches nothing, or has an unsupported format."""


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files named by ``patterns`` (paths or globs), in the given order, each glob sorted."""
    files: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise InputError(f"{pattern}: glob matches no file")
        elif os.path.isfile(pattern):
            matches = [pattern]
        elif os.path.isdir(pattern):
            raise InputError(f"{pattern}: is a directory; give its files or a glob such as "
                             f"'{os.path.join(pattern, '*.jsonl')}'")
        else:
            raise InputError(f"{pattern}: input file does not exist")
        for path in matches:
            if not path.endswith(SUPPORTED_EXTENSIONS):
                raise InputError(f"{path}: unsupported input format (use {', '.join(SUPPORTED_EXTENSIONS)})")
        files.extend(matches)
    return files


def _is_json_array(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith(b"[")


def _is_line_based(path: str) -> bool:
    return path.endswith(".jsonl") or (path.endswith(".json") and not _is_json_array(path))


@dataclass(frozen=True)
class Segment:
    """Bytes ``[start, end)`` of ``path`` (the whole file for non-line formats)."""

    path: str
    start: int
    end: int


def _next_line_start(f, offset: int) -> int:
    """The first line start at or after ``offset``."""
    if offset == 0:
        return 0
    f.seek(offset - 1)
    f.readline()
    return f.tell()


def plan_partitions(files: list[str], partitions: int) -> list[list[Segment]]:
    """Split ``files`` into at most ``partitions`` contiguous, non-empty groups of segments."""
    sizes = [os.path.getsize(p) for p in files]
    total = sum(sizes)
    target = max(1, -(-total // max(1, partitions)))
    groups: list[list[Segment]] = [[] for _ in range(max(1, partitions))]
    base = 0
    for path, size in zip(files, sizes):
        if _is_line_based(path):
            cuts = {0, size}
            with open(path, "rb") as f:
                for k in range(1, partitions):
                    local = k * target - base
                    if 0 < local < size:
                        cuts.add(_next_line_start(f, local))
            bounds = sorted(c for c in cuts if c <= size)
            pieces = [Segment(path, a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
        else:
            pieces = [Segment(path, 0, size)]
        for seg in pieces:
            groups[min(len(groups) - 1, (base + seg.start) // target)].append(seg)
        if not pieces:  # an empty file still belongs to the stream (it has no records)
            groups[min(len(groups) - 1, base // target)].append(Segment(path, 0, 0))
        base += size
    return [g for g in groups if g]


@dataclass
class Chunk:
    """Consecutive records of one file; ``nbytes`` is the input bytes they cover."""

    path: str
    kind: str
    records: list
    nbytes: int


def _line_chunks(seg: Segment, chunk_bytes: int) -> Iterator[Chunk]:
    with open(seg.path, "rb") as f:
        f.seek(seg.start)
        pos = seg.start
        records: list[bytes] = []
        size = 0
        while pos < seg.end:
            line = f.readline()
            if not line:
                break
            pos += len(line)
            records.append(line)
            size += len(line)
            if size >= chunk_bytes:
                yield Chunk(seg.path, LINE, records, size)
                records, size = [], 0
        if records:
            yield Chunk(seg.path, LINE, records, size)


def _row_chunks(seg: Segment, chunk_bytes: int) -> Iterator[Chunk]:
    from datasets import load_dataset

    builder = "parquet" if seg.path.endswith(".parquet") else "json"
    try:
        rows = load_dataset(builder, data_files=[seg.path], split="train", streaming=True)
        records: list[dict] = []
        size = 0
        for row in rows:
            records.append(row)
            # The byte size of a row is not known for these formats; estimate it from
            # its strings so chunks stay about chunk_bytes of text.
            size += sum(len(v) for v in row.values() if isinstance(v, str)) + 1
            if size >= chunk_bytes:
                yield Chunk(seg.path, ROW, records, 0)
                records, size = [], 0
    except Exception as e:  # datasets/pyarrow errors do not name the file
        raise InputError(f"{seg.path}: cannot read as {builder}: {e}") from e
    # The whole file's bytes are credited with the last chunk.
    yield Chunk(seg.path, ROW, records, seg.end - seg.start)


def iter_chunks(segments: list[Segment], chunk_bytes: int) -> Iterator[Chunk]:
    """Ordered chunks of the records of ``segments``."""
    for seg in segments:
        if seg.path.endswith(".txt"):
            with open(seg.path, "rb") as f:
                yield Chunk(seg.path, TEXT_FILE, [f.read()], seg.end - seg.start)
        elif _is_line_based(seg.path):
            yield from _line_chunks(seg, chunk_bytes)
        else:
            yield from _row_chunks(seg, chunk_bytes)


def parse_record(kind: str, payload) -> tuple[str | None, dict | None]:
    """Turn one record into ``(problem, fields)``.

    ``problem`` is None or one of ``"blank_line"``, ``"invalid_utf8"``,
    ``"invalid_json"``, ``"not_an_object"``; ``fields`` maps keys to values
    (a ``.txt`` record is ``{None: text}``, meaning "the text under any key").
    """
    if kind == ROW:
        return None, payload
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8", None
    if kind == TEXT_FILE:
        return None, {None: text}
    if not text.strip():
        return "blank_line", None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return "invalid_json", None
    if not isinstance(obj, dict):
        return "not_an_object", None
    return None, obj


def field(fields: dict, key: str):
    """The value of ``key`` (a ``.txt`` record answers every key); KeyError if missing."""
    return fields[None] if None in fields else fields[key]
