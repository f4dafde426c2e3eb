"""Received files are untrusted: digests of what we wrote, and paths that stay in their directory.

A checkpoint, export, cache or shard may come from someone else. Two rules hold for every
file the project reads back:

* its bytes are compared with the sha256 recorded when it was written (`digest_file`,
  `check_digest`), so same-size corruption is caught, not only truncation;
* a file name read from another file (``latest``, ``tokenizer_info.json``'s ``model_file``, a
  cache index) names a file *inside* the directory holding the record (`resolve_inside`): no
  absolute paths, no ``..``, no symlink out of it.

A digest is written ``"sha256:<64 hex digits>"``. Hashing runs at ~1.9 GB/s per core here
(hashlib releases the GIL, so `digest_files` hashes several files in parallel threads).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from megacompress.errors import UserError

ALGORITHM = "sha256"
_BLOCK = 1 << 22


class IntegrityError(UserError, ValueError):
    """A file whose contents or location cannot be trusted; the message names the file."""


def digest_bytes(data: bytes | memoryview) -> str:
    return f"{ALGORITHM}:{hashlib.new(ALGORITHM, data).hexdigest()}"


def digest_file(path: str | os.PathLike) -> str:
    """``"sha256:..."`` of the file's bytes (streamed in 4 MiB blocks)."""
    with open(path, "rb") as f:
        return f"{ALGORITHM}:{hashlib.file_digest(f, ALGORITHM).hexdigest()}"


def digest_files(directory: str | os.PathLike, names: list[str], workers: int = 4) -> dict[str, str]:
    """``{name: digest}`` of ``directory/name`` for every name (hashed in parallel threads)."""
    directory = Path(directory)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(names)))) as pool:
        return dict(zip(names, pool.map(lambda name: digest_file(directory / name), names)))


def check_digest(path: str | os.PathLike, expected: str, actual: str | None = None) -> None:
    """Refuse ``path`` unless its digest (``actual``, or computed now) equals ``expected``."""
    actual = actual or digest_file(path)
    if actual != expected:
        raise IntegrityError(f"{path}: contents changed since it was written (corrupt or edited): "
                             f"digest {actual}, recorded {expected}")


def resolve_inside(directory: str | os.PathLike, name: str, *, source: str | os.PathLike) -> Path:
    """``directory/name``, refused unless it stays inside ``directory`` (``source`` is the file
    the name was read from, for the message). Symlinks are followed before the check."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise IntegrityError(f"{source}: {name!r} is not a file name")
    base = Path(directory).resolve()
    target = (base / name).resolve()
    if os.path.isabs(name) or (target != base and base not in target.parents):
        raise IntegrityError(f"{source}: {name!r} points outside {directory}; a name recorded there must "
                             "name a file inside it")
    return target
