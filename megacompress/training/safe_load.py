"""Reading pickled checkpoint files without running code they carry.

DeepSpeed's loaders (``engine.load_checkpoint``, ``zero_to_fp32``, ``ds_to_universal``,
the universal load) call ``torch.load(..., weights_only=False)``: a received
``*_optim_states.pt`` whose pickle carries a ``__reduce__`` payload would run it. So every
load of a checkpoint file goes through `restricted_load`: ``torch.load(weights_only=True)``,
which rebuilds tensors, containers and primitives only, plus exactly the DeepSpeed classes
in `ALLOWED_GLOBALS` (what DeepSpeed 0.19's ZeRO 0–3, bf16 and universal checkpoints
contain, found with ``torch.serialization.get_unsafe_globals_in_checkpoint``; anything else
is refused by name).

`guarded_torch_load` makes that hold inside DeepSpeed's own code: while it is active every
``torch.load`` of a file in this process (and in processes forked from it) reads the file's
bytes once, checks them against the digest the checkpoint's manifest records, and unpickles
*those bytes* restricted; so the bytes verified are the bytes DeepSpeed reads, and a file the
manifest does not list is refused. Files under ``scratch`` (what a conversion writes and
reads back itself) are loaded restricted without a digest.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from megacompress.errors import UserError
from megacompress.integrity import check_digest, digest_bytes

# The non-tensor objects DeepSpeed pickles into checkpoints: the loss scaler (DynamicLossScaler
# under fp16), the ZeRO stage enum and the fragment addresses of bf16 / ZeRO-1/2 optimizer states.
ALLOWED_GLOBALS = (LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address)
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|Unsupported global: ([\w.]+)|global ([\w.]+) was not an allowed")


class UnsafeCheckpointError(UserError, ValueError):
    """A checkpoint file that is not plain tensors / containers (or not a torch file at all)."""


def restricted_load(source: str | os.PathLike | io.BytesIO, *, name: str | os.PathLike,
                    map_location: Any = "cpu") -> Any:
    """``torch.load`` of ``source`` that can rebuild only tensors, containers, primitives and
    `ALLOWED_GLOBALS`; ``name`` (the file) is named in the error."""
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            # torch.serialization.load: `torch.load` itself may be `guarded_torch_load`'s wrapper
            return torch.serialization.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        if found:
            what = next(g for g in found.groups() if g).replace("posix.", "os.")
            raise UnsafeCheckpointError(f"{name}: contains a pickled object that is not plain tensors/containers "
                                        f"({what}); refusing to load") from None
        raise UnsafeCheckpointError(f"{name}: not a readable torch checkpoint file ({_first_line(exc)})") from None
    except (RuntimeError, EOFError, ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise UnsafeCheckpointError(f"{name}: not a readable torch checkpoint file "
                                    f"({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def _read_verified(real: Path, digests: Mapping[str, str], scratch: tuple[Path, ...]) -> io.BytesIO:
    data = real.read_bytes()
    expected = digests.get(str(real))
    if expected is not None:
        check_digest(real, expected, digest_bytes(data))
    elif not any(real == s or s in real.parents for s in scratch):
        raise UnsafeCheckpointError(f"{real}: not listed in its checkpoint's manifest.json; refusing to load it")
    return io.BytesIO(data)


@contextmanager
def guarded_torch_load(digests: Mapping[str | os.PathLike, str | None],
                       scratch: tuple[str | os.PathLike, ...] = ()) -> Iterator[None]:
    """Within the block, ``torch.load(path)`` = verify ``path`` against ``digests`` (real path ->
    ``"sha256:..."``; None: listed, written before digests were recorded) and `restricted_load` it.

    Not reentrant and process-wide (it replaces ``torch.load``): for CLIs and the trainer's
    resume, which run one load at a time."""
    known = {os.path.realpath(p): d for p, d in digests.items()}
    verified = {p: d for p, d in known.items() if d is not None}
    unverified = tuple(Path(p) for p, d in known.items() if d is None)
    roots = tuple(Path(os.path.realpath(s)) for s in scratch) + unverified
    original = torch.load

    def load(f, map_location=None, *args, **kwargs):  # DeepSpeed's weights_only / mmap flags are overridden
        if isinstance(f, (str, os.PathLike)):
            real = Path(os.path.realpath(f))  # the file itself, not a conversion's symlink to it
            return restricted_load(_read_verified(real, verified, roots), name=real, map_location=map_location)
        return restricted_load(f, name=getattr(f, "name", "<stream>"), map_location=map_location)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def main(argv: list[str] | None = None) -> int:
    """``python -m megacompress.training.safe_load MANIFEST_JSON -- DS_TO_UNIVERSAL_ARGS``: DeepSpeed's
    ``ds_to_universal`` with every ``torch.load`` guarded (`guarded_torch_load`) by the digests
    that the JSON file (``{"digests": {path: digest}, "scratch": [dir]}``) lists."""
    import json

    from deepspeed.checkpoint import ds_to_universal

    from megacompress.integrity import IntegrityError

    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    sys.argv = ["ds_to_universal", *argv[2:]]
    try:
        with guarded_torch_load(spec["digests"], tuple(spec["scratch"])):
            ds_to_universal.main(ds_to_universal.parse_arguments())
    except (UnsafeCheckpointError, IntegrityError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
