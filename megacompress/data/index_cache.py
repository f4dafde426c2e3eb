"""Build-once, memory-map-everywhere cache of dataset indices (``.npy`` files).

Datasets describe their sample order with a few integer arrays (document order,
sample boundaries, shuffle permutation, blend assignment). Building them for a
large corpus takes seconds to minutes, so they are built once per configuration
and reused:

* the configuration (a JSON-serialisable dict that must contain everything the
  arrays depend on, including a content digest of each shard's ``.idx``) is
  hashed with SHA-256; the first 16 hex digits name the cache entry;
* on global rank 0 (or in a plain single process) the arrays are built, each
  written as ``{cache_dir}/{name}-{digest}-{key}.npy`` through a temporary file
  and ``os.replace``, and finally ``{cache_dir}/{name}-{digest}.json`` (the
  configuration, human-readable) is written the same way. The JSON file is the
  completion marker: an entry without it is ignored and rebuilt;
* all ranks wait at a ``torch.distributed`` barrier, then memory-map the arrays
  read-only (``np.load(mmap_mode="r")``).

Construction is therefore collective when ``torch.distributed`` is initialised:
every rank must build the same datasets in the same order. ``cache_dir`` must be
visible to all ranks (a shared filesystem on multi-node jobs).

With ``cache_dir=None`` nothing is written: each process builds the arrays in
memory (fine for small validation sets and tests).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.distributed as dist

from megacompress.atomic import atomic_write, write_text_atomic
from megacompress.data.indexed import IndexedDataset, ShardError
from megacompress.integrity import check_digest, digest_files, resolve_inside

# Bump when the layout or meaning of any cached array changes, so stale caches are not reused
# (2: per-epoch GPT sample order and per-epoch generator streams, sidecar checked at build).
CACHE_FORMAT_VERSION = 2


@dataclass
class CachedIndices:
    """Arrays of one cache entry plus where they came from.

    ``built`` is True when this process built the arrays (cache miss on rank 0 or
    no cache), False when they were memory-mapped from an existing entry.
    """

    arrays: dict[str, np.ndarray]
    digest: str
    built: bool
    paths: dict[str, Path]


def shard_digest(prefix: str) -> dict:
    """Identity of a shard for cache keys: SHA-256 of ``PREFIX.idx`` and the ``.bin`` size.

    The content digest (not mtime) makes keys equal on every machine holding the
    same shard; the ``.idx`` holds every sequence length, so any change to the
    document layout changes the digest.
    """
    idx_path = Path(f"{prefix}.idx")
    bin_path = Path(f"{prefix}.bin")
    for path in (idx_path, bin_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: shard file not found")
    sha = hashlib.sha256()
    with open(idx_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"prefix": str(prefix), "idx_sha256": sha.hexdigest(), "bin_bytes": bin_path.stat().st_size}


def file_records(prefix: str, suffixes: list[str]) -> dict[str, dict]:
    """The ``files`` section of a shard's ``meta.json``: ``{name: {"size", "digest"}}`` of every
    file ``PREFIX + suffix`` (names relative to the shard's directory; see `verify_files`)."""
    directory, stem = os.path.split(os.path.abspath(prefix))
    names = [stem + suffix for suffix in suffixes]
    digests = digest_files(directory, names)
    return {name: {"size": os.path.getsize(os.path.join(directory, name)), "digest": digests[name]}
            for name in names}


# (path, size, mtime_ns, digest) of the files this process has verified (`verify_files`).
_VERIFIED: set[tuple[str, int, int, str]] = set()


def verify_files(prefix: str, meta: dict, cache_dir: str | os.PathLike | None = None) -> None:
    """Check every file the shard's ``meta.json`` lists under ``files`` (`file_records`): present,
    inside the shard's directory, of the recorded size and sha256. Nothing to check without a
    ``files`` section (shards written before digests were recorded, Megatron's shards).

    Cost. The size is compared on every call (a stat). Hashing runs at ~1.9 GB/s per core, so a
    100 GB shard would cost ~50 s on every rank at every start; instead a file is hashed once and
    the verification remembered, keyed by (path, size, mtime_ns, recorded digest): in this process
    (``_VERIFIED``) and, with a ``cache_dir``, as a marker file ``ShardFilesVerified-KEY.json``
    there. Any rewrite of the file (a copy, an edit, a truncation, another file renamed in its
    place) changes the key, so the file is hashed again. What this leaves out is a change that
    keeps size and mtime (bit rot on the disk, a tool that restores mtime) after a verification:
    to recheck, delete the markers. Not collective: ranks may see other mtimes (node-local
    copies), so each checks its own key; on a shared filesystem the first run may hash a file
    on several ranks at once, later runs on none.
    """
    files = meta.get("files")
    if files is None:
        return
    source = f"{prefix}.meta.json"
    if not isinstance(files, dict):
        raise ShardError(f"{source}: 'files' must be an object of file name -> {{size, digest}}")
    directory = os.path.dirname(os.path.abspath(prefix))
    for name, entry in files.items():
        path = resolve_inside(directory, name, source=source)
        if not (isinstance(entry, dict) and type(entry.get("size")) is int and isinstance(entry.get("digest"), str)):
            raise ShardError(f"{source}: files entry {name!r} must be {{\"size\": int, \"digest\": str}}")
        if not path.is_file():
            raise ShardError(f"{path}: shard file missing (listed in {source})")
        stat = path.stat()
        if stat.st_size != entry["size"]:
            raise ShardError(f"{path}: {stat.st_size} bytes, {source} records {entry['size']} (truncated, "
                             "extended or replaced)")
        key = (str(path), stat.st_size, stat.st_mtime_ns, entry["digest"])
        if key in _VERIFIED:
            continue
        described = dict(zip(("path", "size", "mtime_ns", "digest"), key))
        marker = None if cache_dir is None else Path(cache_dir) / f"ShardFilesVerified-{config_digest(described)}.json"
        if marker is None or not marker.is_file():
            check_digest(path, entry["digest"])
            if marker is not None:
                marker.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(marker, json.dumps(described) + "\n")
        _VERIFIED.add(key)


def open_document_range(prefix: str, seq_length: int, document_range: tuple[int, int] | None):
    """Open shard ``prefix`` and resolve a half-open ``document_range`` (``None``: all).

    Returns ``(IndexedDataset, (start, end))``; bad arguments raise naming the shard.
    """
    if seq_length < 1:
        raise ValueError(f"{prefix}: seq_length must be >= 1, got {seq_length}")
    shard = IndexedDataset(prefix)
    start, end = document_range or (0, len(shard))
    if not 0 <= start <= end <= len(shard):
        raise ValueError(f"{prefix}: document_range {document_range} outside [0, {len(shard)}]")
    return shard, (start, end)


def config_digest(config: dict) -> str:
    """First 16 hex digits of SHA-256 over the canonical JSON of ``config``."""
    payload = json.dumps({"cache_format": CACHE_FORMAT_VERSION, **config}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a str path
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def load_or_build(
    name: str,
    config: dict,
    build: Callable[[], dict[str, np.ndarray]],
    cache_dir: str | os.PathLike | None,
) -> CachedIndices:
    """Return the arrays for ``config``, building them on rank 0 on a cache miss.

    ``name`` is a short file-name-safe label (e.g. ``"GPTDataset"``); ``build``
    returns a dict of key -> 1-D or 2-D numeric array and must be a pure function
    of ``config``. Collective under ``torch.distributed`` (see module docstring).
    """
    digest = config_digest(config)
    if cache_dir is None:
        arrays = build()
        return CachedIndices(arrays=arrays, digest=digest, built=True, paths={})

    cache = Path(cache_dir)
    marker = cache / f"{name}-{digest}.json"
    rank = dist.get_rank() if _is_distributed() else 0
    built = False
    error: BaseException | None = None
    if rank == 0 and not marker.is_file():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            arrays = build()
            for key, array in arrays.items():
                atomic_write(cache / f"{name}-{digest}-{key}.npy", lambda tmp: _save_npy(tmp, array))
            description = {"name": name, "digest": digest, "keys": sorted(arrays), "config": config}
            write_text_atomic(marker, json.dumps(description, indent=2, sort_keys=True) + "\n")
            built = True
        except BaseException as exc:  # reach the barrier anyway so other ranks fail instead of hanging
            error = exc
    if _is_distributed():
        dist.barrier()
    if error is not None:
        raise error
    if not marker.is_file():
        raise FileNotFoundError(
            f"{marker}: index cache entry missing after rank 0 built it; rank 0 failed (see its log) "
            f"or cache_dir {cache} is not shared between ranks"
        )
    keys = json.loads(marker.read_text())["keys"]
    paths = {key: cache / f"{name}-{digest}-{key}.npy" for key in keys}
    arrays = {}
    for key, path in paths.items():
        try:
            arrays[key] = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable index cache file ({exc}); delete {marker} to rebuild") from exc
    return CachedIndices(arrays=arrays, digest=digest, built=built, paths=paths)
