"""Partitioned preprocessing: the files of one partition, and the merge of all of them.

``--partitions N --partition-index I`` packs partition I alone (so N machines or SLURM
array tasks can each pack one) into ``{shard}.partIIII-of-NNNN.{bin,idx}`` (+ ``.eos``) for
every key's shard, then writes the partition's *record*
``{output_prefix}.partIIII-of-NNNN.json``: the settings it was packed with, its counts and
its sentence model. The record is written last, so it exists only for a finished partition.
``--merge`` checks that every record exists and was packed with the merge's own settings,
concatenates the partitions in order and removes them; the result is byte-identical to a
one-process run (which takes the same path).
"""

from __future__ import annotations

import json
import os

from megacompress.errors import UserError
from megacompress.atomic import write_text_atomic
from megacompress.data.indexed import IndexedDatasetWriter, bin_path, idx_path


class PartitionError(UserError, ValueError):
    """A partition that is missing, unfinished or packed with other settings than the merge's."""


def part_suffix(index: int, count: int) -> str:
    return f".part{index:04d}-of-{count:04d}"


def record_path(output_prefix: str, index: int, count: int) -> str:
    return output_prefix + part_suffix(index, count) + ".json"


def write_record(output_prefix: str, index: int, count: int, settings: dict, stats: dict, trained_chars: int,
                 sentence_model: str | None) -> None:
    record = {"partition": index, "partitions": count, "settings": settings, "stats": stats,
              "trained_chars": trained_chars, "sentence_model": sentence_model}
    write_text_atomic(record_path(output_prefix, index, count), json.dumps(record, sort_keys=True) + "\n")


def _repack(index: int, count: int) -> str:
    return f"pack it again with --partitions {count} --partition-index {index} and the merge's other flags"


def read_records(output_prefix: str, count: int, settings: dict, shards: list[list[str]]) -> list[dict]:
    """Every partition's record, checked: present, finished (its shard files exist), packed
    with ``settings``, and all with one sentence model. ``shards[i]``: partition i's prefixes."""
    ours = json.loads(json.dumps(settings))  # JSON types (lists, not tuples), as the records hold them
    records = []
    for index in range(count):
        path = record_path(output_prefix, index, count)
        try:
            with open(path) as f:
                record = json.load(f)
        except FileNotFoundError:
            raise PartitionError(f"partition {index} of {count} is missing: no {path} ({_repack(index, count)})") from None
        except json.JSONDecodeError as err:
            raise PartitionError(f"partition {index} of {count}: {path} is not valid JSON ({err})") from None
        theirs = record.get("settings", {})
        for key in sorted(ours.keys() | theirs.keys()):
            if theirs.get(key) != ours.get(key):
                raise PartitionError(
                    f"partition {index} of {count} ({path}) does not match the merge: {key} is "
                    f"{theirs.get(key)!r} there, {ours.get(key)!r} here ({_repack(index, count)})")
        for prefix in shards[index]:
            for file in (bin_path(prefix), idx_path(prefix)):
                if not os.path.isfile(file):
                    raise PartitionError(f"partition {index} of {count}: {file} is missing ({_repack(index, count)})")
        if records and record.get("sentence_model") != records[0]["sentence_model"]:
            raise PartitionError(f"partition {index} of {count} ({path}) has another sentence model than "
                                 f"partition 0 ({_repack(index, count)})")
        records.append(record)
    return records


def merge_shards(final: str, parts: list[str], dtype) -> None:
    """Concatenate the shards ``parts`` in order into the shard ``final``."""
    with IndexedDatasetWriter(final, dtype) as writer:
        for prefix in parts:
            writer.merge(prefix)


def remove_partitions(output_prefix: str, count: int, indices, shards: list[list[str]]) -> None:
    """Delete the records of ``indices`` and every file of the shards ``shards`` (missing ones are fine)."""
    files = [record_path(output_prefix, i, count) for i in indices]
    files += [path for prefix in (p for group in shards for p in group) for path in (bin_path(prefix), idx_path(prefix))]
    for path in files:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def merged_stats(records: list[dict]) -> dict[str, int]:
    total: dict[str, int] = {}
    for record in records:
        for name, value in record["stats"].items():
            total[name] = total.get(name, 0) + value
    return total


def check_index(index: int | None, count: int, merge: bool) -> None:
    if index is not None and merge:
        raise PartitionError("--partition-index packs one partition and --merge joins them: give one of them")
    if index is not None and not 0 <= index < count:
        raise PartitionError(f"--partition-index {index} is not in [0, --partitions {count})")
    if merge and count < 2:
        raise PartitionError("--merge needs --partitions N (N > 1), as given to the partitions")

