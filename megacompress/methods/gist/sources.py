"""Where instruction records come from (docs/gist.md, "Instruction data sources, long records,
several evaluation splits"): `load_records(spec, fields)`.

``spec`` is one of

* a ``.json`` (a list of objects, or JSON lines) or ``.jsonl`` file: `data.read_records`
  (strict: a bad line is an error naming the file and line, not a skipped record);
* a ``.parquet`` file: its rows, read with the shared corpus reader
  (`megacompress.data.readers`, ``datasets``' parquet builder);
* a directory written by ``datasets``' ``save_to_disk`` (a ``Dataset``; a ``DatasetDict`` with
  one split, else name the split's subdirectory ``DIR/SPLIT``);
* ``hf:NAME[:SPLIT]``: ``datasets.load_dataset(NAME, split=SPLIT)`` (default split ``train``),
  from the local ``datasets`` cache or the hub. Where the hub cannot be reached (offline) this
  is one error saying how to bring the data over: ``save_to_disk`` it elsewhere, copy the
  directory, pass it.

``fields`` maps the record fields ``instruction``, ``input``, ``output`` to other column names
(``--fields instruction=instruction,input=context,output=response`` for Dolly). A mapped
column that no record holds, or an unmapped required field that no record holds, is one error
naming the source and the column (and the columns it has). A ``None`` value (a null of a
parquet or ``datasets`` column) counts as absent, so a null ``input`` is an empty input.
"""

from __future__ import annotations

import os
from pathlib import Path

from megacompress.methods.gist.data import InstructionDataError, read_records

FIELDS = ("instruction", "input", "output")
HF_PREFIX = "hf:"


def parse_fields(text: str | None) -> dict[str, str]:
    """``instruction=COL,input=COL,output=COL`` (any subset) -> {field: column}."""
    if not text:
        return {}
    mapping: dict[str, str] = {}
    for item in text.split(","):
        name, sep, column = (part.strip() for part in item.partition("="))
        if not sep or not name or not column:
            raise InstructionDataError(f"--fields {text!r}: {item!r} is not FIELD=COLUMN "
                                       f"(fields: {', '.join(FIELDS)})")
        if name not in FIELDS:
            raise InstructionDataError(f"--fields {text!r}: unknown field {name!r} (fields: {', '.join(FIELDS)})")
        if name in mapping:
            raise InstructionDataError(f"--fields {text!r}: field {name!r} mapped twice")
        mapping[name] = column
    return mapping


def _hf_records(spec: str) -> list[dict]:
    name, _, split = spec[len(HF_PREFIX):].partition(":")
    split = split or "train"
    if not name:
        raise InstructionDataError(f"{spec}: no dataset name (hf:NAME or hf:NAME:SPLIT)")
    import datasets

    try:
        rows = datasets.load_dataset(name, split=split)
    except OSError as exc:  # ConnectionError (offline, no network), DatasetNotFoundError, missing files
        reason = " ".join(str(exc).split())[:300]
        raise InstructionDataError(
            f"{spec}: cannot load {name!r} (split {split!r}) here ({type(exc).__name__}: {reason}); on a machine "
            f"with network access run `python -c \"import datasets; datasets.load_dataset({name!r}, "
            f"split={split!r}).save_to_disk('DIR')\"`, copy DIR here and pass it as the data path") from None
    except ValueError as exc:  # an unknown split names the ones there are
        raise InstructionDataError(f"{spec}: {' '.join(str(exc).split())[:300]}") from None
    return [dict(row) for row in rows]


def _disk_records(path: Path) -> list[dict]:
    import datasets

    try:
        rows = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:  # not a save_to_disk directory
        raise InstructionDataError(f"{path}: not a directory written by datasets' save_to_disk "
                                   f"({' '.join(str(exc).split())[:200]})") from None
    if isinstance(rows, datasets.DatasetDict):
        if len(rows) != 1:
            raise InstructionDataError(f"{path}: holds the splits {', '.join(rows)}; pass one of them, "
                                       f"e.g. {path / next(iter(rows))}")
        rows = next(iter(rows.values()))
    return [dict(row) for row in rows]


def _parquet_records(path: Path) -> list[dict]:
    from megacompress.data.readers import InputError, Segment, iter_chunks

    try:
        chunks = iter_chunks([Segment(str(path), 0, path.stat().st_size)], chunk_bytes=1 << 62)
        return [dict(row) for chunk in chunks for row in chunk.records]
    except InputError as exc:
        raise InstructionDataError(str(exc)) from None


def raw_records(spec: str | os.PathLike) -> list[dict]:
    """The records of ``spec`` (module docstring) as they are, before any field mapping."""
    text = str(spec)
    if text.startswith(HF_PREFIX):
        return _hf_records(text)
    path = Path(text)
    if path.is_dir():
        return _disk_records(path)
    if not path.exists():
        raise InstructionDataError(f"{path}: no such file or directory (records are a .json / .jsonl / .parquet "
                                   "file, a save_to_disk directory, or hf:NAME[:SPLIT])")
    if path.suffix == ".parquet":
        return _parquet_records(path)
    return read_records(path)


def map_fields(records: list[dict], fields: dict[str, str], source: str, need_output: bool) -> list[dict]:
    """Records with the ``instruction`` / ``input`` / ``output`` fields taken from their columns
    (``fields``; unmapped fields keep their names); other columns are dropped, ``None`` is absent."""
    if not records:
        return records
    columns = list(dict.fromkeys(key for record in records for key in record))
    for name, column in fields.items():
        if column not in columns:
            raise InstructionDataError(f"{source}: no column {column!r} (for --fields {name}={column}); "
                                       f"its columns: {', '.join(map(str, columns))}")
    for name in ("instruction", "output") if need_output else ("instruction",):
        column = fields.get(name, name)
        if column not in columns:
            raise InstructionDataError(f"{source}: no column {column!r}; its columns: {', '.join(map(str, columns))}"
                                       f" (map another with --fields {name}=COLUMN)")
    out = []
    for record in records:
        mapped = {}
        for name in FIELDS:
            value = record.get(fields.get(name, name))
            if value is not None:
                mapped[name] = value
        out.append(mapped)
    return out


def load_records(spec: str | os.PathLike, fields: dict[str, str] | None = None, *,
                 need_output: bool = False) -> list[dict]:
    """Records of ``spec`` with ``fields`` mapped (module docstring)."""
    return map_fields(raw_records(spec), fields or {}, str(spec), need_output)
