"""Build train / valid / test datasets from a data config (what the training engine calls).

``DataConfig.data_path`` names shards Megatron-style: a list of prefixes, or of
alternating ``weight, prefix`` entries for a blend. Each shard's
``PREFIX.meta.json`` (written by ``megacompress.data.preprocess``) is checked
against the training tokenizer (fingerprint and vocab size) and tells whether
documents already end with EOD. A shard without one (packed by Megatron's
``tools/preprocess_data.py``) is accepted with a warning that no fingerprint can
be compared: its token ids must be below the tokenizer's vocab size, and it counts
as packed with ``--append-eod`` exactly when every non-empty document ends with
the EOD id (both read once from the data and cached, see ``megatron_shard_meta``).
``split`` (e.g. ``"969,30,1"``) cuts every shard's documents into contiguous
train / valid / test ranges, as Megatron does. ``DataConfig.kind`` names a
registered dataset kind (``registry``).

For each split with ``n > 0`` requested samples: one shard gives one dataset of
``n`` samples; several give a ``BlendedDataset`` of ``n`` samples whose
components are built with exactly the number of samples the blend takes from
them. All index arrays go through ``index_cache`` under ``cache_dir``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from megacompress.data.blended import BlendedDataset, blend_counts
from megacompress.data.index_cache import load_or_build, shard_digest, verify_files
from megacompress.data.indexed import IndexedDataset, ShardError, bin_path, require_shard
from megacompress.data.registry import DATASET_KINDS, DataConfigError, dataset_kind  # noqa: F401 (re-exported)
from megacompress.data.tokenizers import Tokenizer

SPLIT_NAMES = ("train", "valid", "test")


@dataclass
class DataConfig:
    """The ``data:`` section of a training config.

    ``kind`` is a registered dataset kind (``registry.DATASET_KINDS``).
    ``cache_dir=None`` puts the index cache in ``index-cache/`` next to the first
    shard. ``use_sentences`` (document kind only): None = use the ``.eos``
    sidecar when present, True = require it, False = ignore it. ``pack_records``
    (instruction kind only): several records per sequence instead of one.
    """

    data_path: list = field(default_factory=list)
    kind: str = "gpt"
    split: str = "969,30,1"
    seed: int = 1234
    cache_dir: str | None = None
    shuffle: bool = True
    use_sentences: bool | None = None
    pack_records: bool = False


def parse_data_path(data_path: Sequence) -> list[tuple[str, float]]:
    """``["a"]`` or ``[w1, "a", w2, "b"]`` -> ``[(prefix, weight), ...]``."""
    items = [str(x) for x in data_path]
    if not items:
        raise DataConfigError("data.data_path is empty: give shard prefixes or 'weight prefix' pairs")
    if len(items) == 1:
        return [(items[0], 1.0)]
    if len(items) % 2:
        raise DataConfigError(f"data.data_path {items}: several shards need alternating weight, prefix entries")
    pairs = []
    for weight, prefix in zip(items[::2], items[1::2]):
        try:
            pairs.append((prefix, float(weight)))
        except ValueError:
            raise DataConfigError(f"data.data_path: weight {weight!r} before {prefix!r} is not a number") from None
    return pairs


def split_ranges(split: str, num_documents: int) -> list[tuple[int, int]]:
    """``"969,30,1"`` -> three contiguous half-open document ranges covering ``[0, num_documents)``."""
    try:
        parts = [float(x) for x in split.replace("/", ",").split(",")]
    except ValueError:
        raise DataConfigError(f"data.split {split!r}: expected comma-separated numbers like '969,30,1'") from None
    parts = (parts + [0.0] * 3)[:3]
    if any(p < 0 for p in parts) or sum(parts) <= 0:
        raise DataConfigError(f"data.split {split!r}: weights must be non-negative with a positive sum")
    bounds = [0]
    for p in parts:
        bounds.append(bounds[-1] + round(p / sum(parts) * num_documents))
    bounds[-1] = num_documents  # absorb rounding
    bounds = [min(b, num_documents) for b in bounds]
    return list(zip(bounds[:-1], bounds[1:]))


def read_shard_meta(prefix: str) -> dict | None:
    """The parsed ``PREFIX.meta.json`` (None if there is none); ``DataConfigError`` naming the file if invalid."""
    path = f"{prefix}.meta.json"
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataConfigError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise DataConfigError(f"{path}: not a JSON object")
    required = [("tokenizer", "name", str), ("tokenizer", "fingerprint", str), ("tokenizer", "vocab_size", int),
                ("flags", "append_eod", bool)]
    for section, key, kind in required:
        value = meta.get(section)
        if not isinstance(value, dict) or key not in value:
            raise DataConfigError(f"{path}: key '{section}.{key}' missing")
        if type(value[key]) is not kind:
            raise DataConfigError(f"{path}: '{section}.{key}' must be a {kind.__name__}, not {value[key]!r}")
    return meta


def check_tokenizer(prefix: str, meta: dict, tokenizer: Tokenizer) -> None:
    """Refuse a shard tokenized with a different tokenizer than the one training uses."""
    recorded = meta["tokenizer"]
    if recorded["vocab_size"] != tokenizer.vocab_size or recorded["fingerprint"] != tokenizer.fingerprint():
        raise DataConfigError(
            f"{prefix}.meta.json: shard was tokenized with {recorded['name']} (vocab_size "
            f"{recorded['vocab_size']}, fingerprint {recorded['fingerprint'][:12]}) but training uses "
            f"{tokenizer.name} (vocab_size {tokenizer.vocab_size}, fingerprint {tokenizer.fingerprint()[:12]})"
        )


def _shard_token_stats(prefix: str, eod_id: int, cache_dir: str) -> dict[str, np.ndarray]:
    """Cached ``token_bounds`` [min, max] (``[0, -1]`` for no tokens) and ``eod_endings``
    [non-empty documents ending with ``eod_id``, non-empty documents]: one pass over ``.bin``."""
    def build() -> dict[str, np.ndarray]:
        shard = IndexedDataset(prefix)
        last = shard.document_last_tokens()
        return {"token_bounds": np.array(shard.token_bounds() or (0, -1), dtype=np.int64),
                "eod_endings": np.array([int((last == eod_id).sum()), len(last)], dtype=np.int64)}

    return load_or_build("ShardStats", {"shard": shard_digest(prefix), "eod_id": int(eod_id)}, build,
                         cache_dir).arrays


def check_token_bounds(prefix: str, stats: dict[str, np.ndarray], tokenizer: Tokenizer, why: str,
                       error: type[ValueError] = ShardError) -> None:
    """``error`` naming the ``.bin`` when a token id is outside the tokenizer's vocabulary (the
    embedding lookup would fail deep inside training instead)."""
    low, high = (int(v) for v in stats["token_bounds"])
    if low < 0 or high >= tokenizer.vocab_size:
        raise error(f"{bin_path(prefix)}: token ids span [{low}, {high}] but tokenizer {tokenizer.name} has "
                         f"vocab_size {tokenizer.vocab_size}; {why}")


def megatron_shard_meta(prefix: str, tokenizer: Tokenizer, cache_dir: str) -> dict:
    """Metadata for a shard without ``meta.json``: the vocabulary bound checked, ``append_eod`` inferred.

    Megatron's ``preprocess_data.py`` appends EOD only with ``--append-eod``, so the shard
    counts as packed with it when every non-empty document ends with ``tokenizer.eod``
    (otherwise the datasets insert EOD after each document).
    """
    stats = _shard_token_stats(prefix, tokenizer.eod, cache_dir)
    check_token_bounds(prefix, stats, tokenizer, "the shard was packed with another tokenizer", DataConfigError)
    ending, documents = (int(v) for v in stats["eod_endings"])
    append_eod = documents > 0 and ending == documents
    warnings.warn(
        f"{prefix}: no {prefix}.meta.json (not packed by megacompress.data.preprocess), so the tokenizer "
        f"fingerprint cannot be compared; token ids are < vocab_size {tokenizer.vocab_size} of {tokenizer.name}, "
        f"{ending} of {documents} documents end with EOD {tokenizer.eod} -> append_eod={append_eod}",
        stacklevel=3,
    )
    return {"flags": {"append_eod": append_eod}}


def shard_meta(prefix: str, tokenizer: Tokenizer, cache_dir: str) -> dict:
    """The checked metadata of one shard: its ``meta.json``, or ``megatron_shard_meta`` without one.

    With ``meta.json``: the tokenizer is compared, the files it lists are verified (`verify_files`)
    and the token ids are checked against the vocabulary all the same (cached), since a shard
    written before digests were recorded can still have been changed on disk.
    """
    meta = read_shard_meta(prefix)
    if meta is None:
        return megatron_shard_meta(prefix, tokenizer, cache_dir)
    check_tokenizer(prefix, meta, tokenizer)
    verify_files(prefix, meta, cache_dir)
    check_token_bounds(prefix, _shard_token_stats(prefix, tokenizer.eod, cache_dir), tokenizer,
                       "the shard is corrupt")
    return meta


def _default_cache_dir(prefix: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(prefix)), "index-cache")


def build_datasets(config: DataConfig, tokenizer: Tokenizer, seq_length: int,
                   num_samples: Sequence[int]) -> list:
    """``[train, valid, test]`` datasets with ``num_samples[i]`` samples each (None where 0).

    Collective under ``torch.distributed``: every rank must call it with the same arguments.
    """
    kind = dataset_kind(config.kind)
    if config.pack_records and config.kind != "instruction":
        raise DataConfigError(f"data.pack_records is for data.kind 'instruction', not {config.kind!r} "
                              "(token kinds pack documents already)")
    if len(num_samples) != 3:
        raise DataConfigError(f"num_samples must give (train, valid, test) counts, got {list(num_samples)}")
    shards = parse_data_path(config.data_path)
    for prefix, _ in shards:  # every missing shard is named before anything is built
        require_shard(prefix)
    cache_dir = config.cache_dir or _default_cache_dir(shards[0][0])
    metas = {prefix: shard_meta(prefix, tokenizer, cache_dir) for prefix, _ in shards}
    ranges = {prefix: split_ranges(config.split, len(IndexedDataset(prefix))) for prefix, _ in shards}

    datasets = []
    for split_id, n in enumerate(num_samples):
        if not n:
            datasets.append(None)
            continue
        weights = [w for _, w in shards]
        counts = [n] if len(shards) == 1 else blend_counts(weights, n, cache_dir).tolist()
        parts = []
        for (prefix, _), count in zip(shards, counts):
            document_range = ranges[prefix][split_id]
            if document_range[0] == document_range[1]:
                if count:
                    raise DataConfigError(f"{prefix}: data.split {config.split!r} leaves no documents for the "
                                          f"{SPLIT_NAMES[split_id]} split but {count} samples are needed")
                parts.append([])  # weight-zero shard in this split: never sampled by the blend
                continue
            parts.append(kind.build(prefix, metas[prefix], config, seq_length, count, document_range,
                                    tokenizer, cache_dir))
        datasets.append(parts[0] if len(shards) == 1 else BlendedDataset(parts, weights, n, cache_dir))
    return datasets
