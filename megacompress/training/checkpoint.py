"""Atomic, verifiable DeepSpeed checkpoints: save, keep-last-K, resume.

Layout of a checkpoint root (``checkpoint.dir``)::

    ROOT/
      latest                     text: the committed tag, e.g. "global_step40" (DeepSpeed's name)
      global_step40/             one committed checkpoint (a DeepSpeed tag directory)
        mp_rank_00_model_states.pt                    DeepSpeed: module, scheduler, engine counters
        zero_pp_rank_{d}_mp_rank_{t}_optim_states.pt  DeepSpeed: ZeRO optimizer shard per rank
        rng_rank{r:05d}.pt       ours: python / numpy / torch RNG state of global rank r
        manifest.json            ours, written last: train state, configs, every file's size
      global_step40.tmp/         a write in progress (or a killed one: ignored and removed)
      zero_to_fp32.py            DeepSpeed's consolidation script

Commit protocol (a kill at any point leaves the previous checkpoint loadable):
every rank writes into ``TAG.tmp``; barrier; rank 0 writes ``manifest.json`` (atomic),
renames ``TAG.tmp`` -> ``TAG``, then replaces ``latest`` (temp file + ``os.replace``),
then deletes checkpoints beyond the newest ``keep_last``; barrier.

Loading verifies the manifest first: a missing or truncated file is an error naming it,
and a model config that differs from the running one is refused with the differing keys.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megacompress.atomic import atomic_write, write_text_atomic

MANIFEST = "manifest.json"
LATEST = "latest"
TAG_RE = re.compile(r"^global_step(\d+)$")
# Test hook: seconds rank 0 sleeps between the ranks' writes and the commit (rename).
SLEEP_BEFORE_COMMIT_ENV = "MEGACOMPRESS_CKPT_SLEEP_BEFORE_COMMIT"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file or the differing keys."""


@dataclass
class TrainState:
    """What the training loop needs besides the DeepSpeed state to continue exactly."""

    step: int  # optimizer steps completed
    consumed_samples: int  # sequences consumed over all DP ranks (the sampler's resume point)
    tokens_seen: int


def tag_for(step: int) -> str:
    return f"global_step{step}"


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rng_file(rank: int) -> str:
    return f"rng_rank{rank:05d}.pt"


def read_latest(root: Path) -> str | None:
    """The committed tag ``latest`` points to, or None when there is no checkpoint yet."""
    path = Path(root) / LATEST
    if not path.exists():
        return None
    tag = path.read_text().strip()
    if not (Path(root) / tag).is_dir():
        raise CheckpointError(f"{path} points to {tag!r}, but {Path(root) / tag} does not exist")
    return tag


def read_manifest(ckpt_dir: Path) -> dict[str, Any]:
    """Load and verify ``ckpt_dir/manifest.json``: every listed file exists with its size."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt_dir} is incomplete or not ours: {path} is missing")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint manifest {path} is corrupt: {exc}") from None
    for name, size in manifest["files"].items():
        file = ckpt_dir / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} is missing (listed in {path})")
        actual = file.stat().st_size
        if actual != size:
            raise CheckpointError(f"checkpoint file {file} is corrupt: {actual} bytes, expected {size} "
                                  f"(truncated or overwritten)")
    return manifest


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved -> current`` for every key whose value differs."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k, '<missing>')!r} -> {current.get(k, '<missing>')!r}"
            for k in keys if saved.get(k) != current.get(k)]


def list_files(ckpt_dir: Path) -> dict[str, int]:
    """Relative path -> size of every file below ``ckpt_dir`` (except the manifest)."""
    return {str(p.relative_to(ckpt_dir)): p.stat().st_size for p in sorted(ckpt_dir.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def write_manifest(ckpt_dir: Path, *, state: TrainState, model_config: dict[str, Any],
                   train_config: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    manifest = {
        "format": 1,
        "train_state": vars(state),
        "model_config": model_config,
        "train_config": train_config,
        "world_size": _world(),
        **(extra or {}),
        "files": list_files(ckpt_dir),
    }
    write_text_atomic(ckpt_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))


class CheckpointManager:
    """Saves and loads a DeepSpeed engine's checkpoints under ``root`` (layout above)."""

    def __init__(self, root: str | Path, keep_last: int = 2):
        self.root = Path(root)
        self.keep_last = keep_last

    def committed_steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.root.iterdir() if (m := TAG_RE.match(p.name)) and p.is_dir())

    def save(self, engine, state: TrainState, *, model_config: dict[str, Any], train_config: dict[str, Any],
             rng_state: dict[str, Any]) -> Path:
        """Collective: every rank must call it. Returns the committed checkpoint directory."""
        tag = tag_for(state.step)
        final, tmp = self.root / tag, self.root / f"{tag}.tmp"
        rank = _rank()
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob("*.tmp"):  # uncommitted leftovers of a killed write
                shutil.rmtree(stale)
        _barrier()
        engine.save_checkpoint(str(self.root), tag=tmp.name, save_latest=False)
        rng_path = tmp / rng_file(rank)
        atomic_write(rng_path, lambda part: torch.save(rng_state, part))
        _barrier()
        if rank == 0:
            write_manifest(tmp, state=state, model_config=model_config, train_config=train_config)
            delay = float(os.environ.get(SLEEP_BEFORE_COMMIT_ENV, "0") or 0)
            if delay:
                time.sleep(delay)
            # Re-saving a step (e.g. after a resume): move the old copy aside with two renames
            # rather than deleting it first, so `latest` lacks its directory only between them.
            # The ".tmp" name makes a leftover from a kill count as stale.
            replaced = self.root / f"{tag}.replaced.tmp"
            if final.exists():
                os.rename(final, replaced)
            os.rename(tmp, final)
            write_text_atomic(self.root / LATEST, tag)
            shutil.rmtree(replaced, ignore_errors=True)
            self._prune(keep=tag)
        _barrier()
        return final

    def _prune(self, keep: str) -> None:
        steps = self.committed_steps()
        for step in steps[:-self.keep_last]:
            if tag_for(step) != keep:
                shutil.rmtree(self.root / tag_for(step))

    def load(self, engine, load_dir: Path, tag: str, *, model_config: dict[str, Any],
             universal: bool = False) -> tuple[TrainState, dict[str, Any]]:
        """Verify ``load_dir/tag``, refuse a different model config, load it into ``engine``.

        Returns the saved `TrainState` and this rank's RNG state (empty when the checkpoint
        came from a different world size, e.g. a universal checkpoint).
        """
        ckpt_dir = Path(load_dir) / tag
        manifest = read_manifest(ckpt_dir)
        diffs = config_differences(manifest["model_config"], model_config)
        if diffs:
            raise CheckpointError(f"checkpoint {ckpt_dir} was saved with a different model config: "
                                  + "; ".join(diffs))
        if not universal and manifest["world_size"] != _world():
            raise CheckpointError(
                f"checkpoint {ckpt_dir} was written by {manifest['world_size']} processes, this run has "
                f"{_world()}: convert it with `python tools/convert_checkpoint.py to-universal` and load it "
                "with checkpoint.load_universal=true")
        path, _ = engine.load_checkpoint(str(load_dir), tag=tag, load_module_strict=True)
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load checkpoint {ckpt_dir}")
        rng_path = ckpt_dir / rng_file(_rank())
        rng = {} if universal or not rng_path.exists() else torch.load(rng_path, weights_only=False)
        return TrainState(**manifest["train_state"]), rng
