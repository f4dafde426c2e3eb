"""Atomic, verifiable DeepSpeed checkpoints: save, keep-last-K, resume.

Layout of a checkpoint root (``checkpoint.dir``)::

    ROOT/
      latest                     text: the committed tag, e.g. "global_step40" (DeepSpeed's name)
      global_step40/             one committed checkpoint (a DeepSpeed tag directory)
        mp_rank_00_model_states.pt                    DeepSpeed: module, scheduler, engine counters
        zero_pp_rank_{d}_mp_rank_{t}_optim_states.pt  DeepSpeed: ZeRO optimizer shard per rank
        rng_rank{r:05d}.pt       ours: python / numpy / torch RNG state of global rank r
        manifest.json            ours, written last: train state, configs, every file's size and sha256
      global_step40.tmp/         a write in progress (or a killed one: removed when a run takes the directory)
      superseded-TIME/           checkpoints of an earlier run set aside by checkpoint.start_over
      zero_to_fp32.py            DeepSpeed's consolidation script

Commit protocol (a kill at any point leaves the previous checkpoint loadable):
every rank writes into ``TAG.tmp``; barrier; rank 0 hashes every file and writes
``manifest.json`` (atomic), renames ``TAG.tmp`` -> ``TAG``, then replaces ``latest`` (temp
file + ``os.replace``), then deletes checkpoints beyond the newest ``keep_last``; barrier.
A save deletes only its own ``TAG.tmp``; leftovers of killed writes are removed by
`CheckpointManager.remove_stale` once the trainer holds the run's lock (`run_lock`).

``latest`` is a tag inside its own directory and nothing else (`read_latest`): missing,
empty, not a ``global_stepN`` name or naming a directory that does not exist while committed
checkpoints are there is an error naming the newest committed step and how to resume from it
(``checkpoint.load_tag``) or start over (``checkpoint.start_over``); a run never silently
restarts over an earlier run's checkpoints.

Received checkpoints are untrusted: every file is read through `safe_load.guarded_torch_load`
(its bytes checked against the manifest's sha256, then unpickled without running code), also
inside DeepSpeed's own loaders.

Loading verifies the manifest first: a missing or truncated file is an error naming it,
a model config that differs from the running one is refused with the differing keys, and so
is a change of a run-defining training key (`RUN_KEYS`) unless ``checkpoint.allow_changes``
names it. A change of the parallel layout must go through a universal checkpoint, and so
must a change of the precision the engine computes in (the manifest's ``precision``): DeepSpeed
keeps a bf16 run's optimizer state in other files than an fp32 run's.

Universal checkpoints across a TP change: every save records DeepSpeed's
``universal_checkpoint_info`` (`universal_checkpoint_info`: which parameters are row-parallel,
vocabulary tables or replicated, derived from the parameters' TP attributes), which
``ds_to_universal`` needs to join TP shards along the right dimension and to strip the
vocabulary padding (which DeepSpeed's universal load re-pads for the new TP size).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from deepspeed.checkpoint.constants import (AUTOTP_UNSUPPORTED_PARAMETER_PATTERNS, ORIGINAL_VOCAB_SIZE,
                                            PARAMETER_WITH_ROW_PARALLELISM_PATTERNS,
                                            TP_REPLICATED_PARAMETER_PATTERNS, UNIVERSAL_CHECKPOINT_INFO,
                                            UNIVERSAL_CHECKPOINT_VERSION_KEY, UNIVERSAL_CHECKPOINT_VERSION_VALUE,
                                            VOCABULARY_PARAMETER_PATTERNS)

from megacompress.errors import UserError
from megacompress.atomic import atomic_write, write_text_atomic
from megacompress.integrity import check_digest, digest_files
from megacompress.data.builder import DataConfigError, parse_data_path
from megacompress.models.config import ModelConfig
from megacompress.parallel import state as parallel_state
from megacompress.parallel.layers import VocabParallelEmbedding
from megacompress.training.safe_load import UnsafeCheckpointError, guarded_torch_load

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2  # 2: "digests" (sha256 of every file) beside "files" (sizes)
LATEST = "latest"
SUPERSEDED = "superseded-"
TAG_RE = re.compile(r"^global_step(\d+)$")
# Test hook: seconds rank 0 sleeps between the ranks' writes and the commit (rename).
SLEEP_BEFORE_COMMIT_ENV = "MEGACOMPRESS_CKPT_SLEEP_BEFORE_COMMIT"
# Training-config keys (dotted, or whole sections) that define the run a checkpoint continues:
# a resume that changes one is refused unless ``checkpoint.allow_changes`` names it. The rest
# (logging, checkpoint, eval, model: compared on its own) only say where and how to report.
RUN_KEYS = ("data", "tokenizer", "schedule", "optimizer", "seed", "parallel.tensor_parallel_size",
            "parallel.zero_stage")
LOCATION_KEYS = ("data.cache_dir",)  # inside RUN_KEYS, but only a location
# Inside RUN_KEYS, but how the same run is computed, not what it is: a resume may change them
# (and a checkpoint from before they existed resumes).
IMPLEMENTATION_KEYS = ("optimizer.implementation",)
# Compared as absolute paths (from the current directory), so that ``runs/x`` and ``/repo/runs/x``
# are one value; a data_path's blend weights as numbers (`parse_data_path`).
PATH_KEYS = ("data.data_path", "tokenizer.model_path", "model.init_from", "eval.data_path")


class CheckpointError(UserError, RuntimeError):
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


def committed_tags(root: Path) -> list[str]:
    """``global_stepN`` directories of ``root`` holding a manifest (committed), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    steps = sorted(int(m.group(1)) for p in root.iterdir()
                   if (m := TAG_RE.match(p.name)) and (p / MANIFEST).is_file())
    return [tag_for(step) for step in steps]


def read_latest(root: Path, *, how_to_resume: str = "pass --tag {tag}", name: str = LATEST) -> str | None:
    """The committed tag ``root/latest`` names; None when ``root`` holds no committed checkpoint.

    ``latest`` must hold a ``global_stepN`` tag of a directory inside ``root``. A missing,
    empty, unreadable or foreign ``latest`` while committed checkpoints exist is a
    `CheckpointError` naming the newest one, with ``how_to_resume`` (``{tag}`` filled in).
    """
    root = Path(root)
    path = root / name
    tags = committed_tags(root)
    if not path.is_file():
        if not tags:
            return None
        problem = "is missing"
    else:
        try:
            tag = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            tag, problem = None, f"is unreadable ({exc})"
        else:
            if not tag:
                problem = "is empty"
            elif not TAG_RE.match(tag):
                problem = f"holds {tag[:80]!r}, which is not a checkpoint tag (global_stepN) inside {root}"
            elif not (root / tag).is_dir():
                problem = f"points to {tag!r}, but {root / tag} does not exist"
            else:
                return tag
    if not tags:
        raise CheckpointError(f"{path} {problem}, and {root} holds no committed checkpoint")
    raise CheckpointError(f"{path} {problem}; the newest committed checkpoint is {root / tags[-1]}: to resume from "
                          f"it {how_to_resume.format(tag=tags[-1])}")


def read_manifest(ckpt_dir: Path) -> dict[str, Any]:
    """Load ``ckpt_dir/manifest.json`` and check that every listed file exists with its size
    (contents are checked against the digests when a file is read, `manifest_digests`)."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt_dir} is incomplete or not ours: {path} is missing")
    try:
        manifest = json.loads(path.read_text())
        sizes = {name: int(size) for name, size in manifest["files"].items()}
        digests = manifest.get("digests", {})
        TrainState(**manifest["train_state"])
        if not (isinstance(manifest["model_config"], dict) and isinstance(manifest["train_config"], dict)
                and isinstance(manifest["world_size"], int)):
            raise TypeError("model_config, train_config or world_size has the wrong type")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint manifest {path} is corrupt: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint manifest {path} is corrupt: {type(exc).__name__} {exc}") from None
    if not isinstance(digests, dict) or set(digests) - set(sizes):
        raise CheckpointError(f"checkpoint manifest {path} is corrupt: its digests name files it does not list")
    for name, size in sizes.items():
        if name.startswith("/") or ".." in Path(name).parts:
            raise CheckpointError(f"checkpoint manifest {path} lists {name!r}, which is not a file inside {ckpt_dir}")
        file = ckpt_dir / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} is missing (listed in {path})")
        actual = file.stat().st_size
        if actual != size:
            raise CheckpointError(f"checkpoint file {file} is corrupt: {actual} bytes, expected {size} "
                                  f"(truncated or overwritten)")
    return manifest


def manifest_digests(ckpt_dir: Path, manifest: dict[str, Any]) -> dict[str, str | None]:
    """Real path -> recorded digest of every file the manifest lists (None for manifests
    written before digests were recorded: those load with a warning, sizes checked only)."""
    digests = manifest.get("digests")
    if digests is None:
        warnings.warn(f"checkpoint {ckpt_dir} was saved before checkpoints recorded digests: its files' sizes are "
                      "checked, their contents are not")
        digests = {}
    return {os.path.realpath(Path(ckpt_dir) / name): digests.get(name) for name in manifest["files"]}


def verify_checkpoint(ckpt_dir: Path) -> dict[str, Any]:
    """`read_manifest`, then every file's digest and a restricted load of every ``.pt`` file
    (what ``convert_checkpoint.py verify`` runs). Returns the manifest."""
    ckpt_dir = Path(ckpt_dir)
    manifest = read_manifest(ckpt_dir)
    digests = manifest_digests(ckpt_dir, manifest)
    with guarded_torch_load(digests):
        for name in sorted(manifest["files"]):
            file = ckpt_dir / name
            if name.endswith(".pt"):
                torch.load(file)  # digest of the bytes read + restricted unpickling
            elif digests[os.path.realpath(file)]:
                check_digest(file, digests[os.path.realpath(file)])
    return manifest


def changed_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose value differs (a missing key counts as None; `PATH_KEYS` as absolute paths)."""
    return sorted(k for k in set(saved) | set(current)
                  if _comparable(k, saved.get(k)) != _comparable(k, current.get(k)))


def _comparable(key: str, value: Any) -> Any:
    if not covered(key, PATH_KEYS) or not value:
        return value
    if isinstance(value, list):  # a data_path: its prefixes (and blend weights) as the data builder reads them
        try:
            return [(os.path.abspath(prefix), weight) for prefix, weight in parse_data_path(value)]
        except DataConfigError:
            return value  # not a valid data_path: compared as written
    return os.path.abspath(value)


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved -> current`` for every key whose value differs."""
    return [f"{k}: {saved.get(k, '<missing>')!r} -> {current.get(k, '<missing>')!r}"
            for k in changed_keys(saved, current)]


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> ``{dotted key: value}`` (lists stay values)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def covered(key: str, prefixes) -> bool:
    """``key`` is one of ``prefixes`` or inside one of them (a section name covers its keys)."""
    return any(key == p or key.startswith(f"{p}.") for p in prefixes)


def run_defining(train_config: dict[str, Any], allowed=()) -> dict[str, Any]:
    """The `RUN_KEYS` entries of ``train_config`` (dotted), less locations, implementation choices
    and ``allowed``."""
    return {k: v for k, v in flatten_config(train_config).items()
            if covered(k, RUN_KEYS) and not covered(k, (*LOCATION_KEYS, *IMPLEMENTATION_KEYS, *allowed))}


def _load_rng(path: Path) -> dict[str, Any]:
    try:  # within `load`'s `guarded_torch_load` the digest is checked too
        rng = torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, UnsafeCheckpointError) as exc:
        raise CheckpointError(f"{path}: not a megacompress RNG state: {str(exc).splitlines()[0]}") from None
    if not isinstance(rng, dict):
        raise CheckpointError(f"{path}: not a megacompress RNG state")
    return rng


def _with_defaults(model_config: dict[str, Any]) -> dict[str, Any]:
    """A saved model config with the defaults of fields added since it was written (so a
    checkpoint from before a new field compares equal to a run that leaves it at its default)."""
    try:
        return ModelConfig.from_dict(model_config).to_dict()
    except ValueError:
        return model_config  # not a valid config any more: the comparison names the keys


def universal_checkpoint_info(model: torch.nn.Module) -> dict[str, Any]:
    """DeepSpeed's ``universal_checkpoint_info`` for ``model``, from its parameters' attributes.

    ``tensor_model_parallel`` + ``partition_dim`` 1: row-parallel (TP shards joined along
    dim 1); ``partition_dim`` 0: column-parallel (dim 0, DeepSpeed's default), or a vocabulary
    table when it is a `VocabParallelEmbedding`'s weight (joined along dim 0, padding rows
    stripped to ``original_vocab_size``); no TP attribute: replicated over TP. Parameters that
    cannot be resharded are listed with the reason under DeepSpeed's
    ``autotp_unsupported_parameter_patterns``, which ``ds_to_universal`` refuses. Patterns are
    exact names (DeepSpeed matches them with ``re.match``).
    """
    vocab = {f"{name}.weight": m.num_embeddings for name, m in model.named_modules()
             if isinstance(m, VocabParallelEmbedding)}
    groups: dict[str, list[str]] = {"row": [], "vocab": [], "replicated": []}
    unsupported = {}
    for name, param in model.named_parameters():
        kind = _tensor_parallel_kind(param, name in vocab)
        if kind in groups:
            groups[kind].append(re.escape(name) + "$")
        elif kind != "column":
            unsupported[re.escape(name) + "$"] = f"{name}: {kind}"
    if len(set(vocab.values())) > 1:  # DeepSpeed strips every table to one original_vocab_size
        unsupported.update({re.escape(name) + "$": f"{name}: vocabulary tables of different sizes {vocab}"
                            for name in vocab})
    info = {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE,
            PARAMETER_WITH_ROW_PARALLELISM_PATTERNS: groups["row"],
            VOCABULARY_PARAMETER_PATTERNS: groups["vocab"],
            TP_REPLICATED_PARAMETER_PATTERNS: groups["replicated"]}
    if vocab:
        info[ORIGINAL_VOCAB_SIZE] = max(vocab.values())
    if unsupported:
        info[AUTOTP_UNSUPPORTED_PARAMETER_PATTERNS] = unsupported
    return info


def _tensor_parallel_kind(param: torch.nn.Parameter, is_vocab: bool) -> str:
    """"row", "column", "vocab", "replicated", or why the parameter cannot be resharded."""
    if not param.requires_grad:
        return "frozen: DeepSpeed's universal load restores only parameters the optimizer updates"
    if not getattr(param, "tensor_model_parallel", False):
        return "replicated"
    dim, stride = getattr(param, "partition_dim", None), getattr(param, "partition_stride", 1)
    if stride != 1 or dim not in (0, 1):
        return f"tensor-parallel with partition_dim={dim}, partition_stride={stride} (only contiguous dim 0/1 splits)"
    if dim == 1:
        return "row"
    return "vocab" if is_vocab else "column"


def list_files(ckpt_dir: Path) -> dict[str, int]:
    """Relative path -> size of every file below ``ckpt_dir`` (except the manifest)."""
    return {str(p.relative_to(ckpt_dir)): p.stat().st_size for p in sorted(ckpt_dir.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def file_records(ckpt_dir: Path) -> dict[str, dict[str, Any]]:
    """The manifest's ``files`` (sizes) and ``digests`` (sha256) of every file below ``ckpt_dir``."""
    files = list_files(ckpt_dir)
    return {"files": files, "digests": digest_files(ckpt_dir, list(files))}


def write_manifest(ckpt_dir: Path, *, state: TrainState, model_config: dict[str, Any],
                   train_config: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    manifest = {
        "format": MANIFEST_FORMAT,
        "train_state": vars(state),
        "model_config": model_config,
        "train_config": train_config,
        "world_size": _world(),
        **(extra or {}),
        **file_records(ckpt_dir),
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

    def remove_stale(self) -> list[str]:
        """Delete ``*.tmp`` leftovers of killed writes (call only while holding the run's lock:
        then no other live run is writing here). Returns their names."""
        stale = sorted(self.root.glob("*.tmp")) if self.root.is_dir() else []
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return [p.name for p in stale]

    def set_aside(self) -> Path | None:
        """Move an earlier run's checkpoints and ``latest`` into ``ROOT/superseded-TIME/``
        (``checkpoint.start_over``: nothing is deleted). Returns that directory, or None."""
        tags = [tag_for(step) for step in self.committed_steps()]
        if not tags and not (self.root / LATEST).exists():
            return None
        aside = self.root / f"{SUPERSEDED}{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        aside.mkdir()
        for name in [*tags, LATEST]:
            if (self.root / name).exists():
                os.rename(self.root / name, aside / name)
        return aside

    def save(self, engine, state: TrainState, *, model_config: dict[str, Any], train_config: dict[str, Any],
             rng_state: dict[str, Any]) -> Path:
        """Collective: every rank must call it. Returns the committed checkpoint directory."""
        tag = tag_for(state.step)
        final, tmp = self.root / tag, self.root / f"{tag}.tmp"
        rank = _rank()
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # this step's own killed write, if any
        _barrier()
        # DeepSpeed writes this module attribute into mp_rank_*_model_states.pt (client_state
        # may not carry the key); ds_to_universal reads it from there.
        setattr(engine.module, UNIVERSAL_CHECKPOINT_INFO, universal_checkpoint_info(engine.module))
        engine.save_checkpoint(str(self.root), tag=tmp.name, save_latest=False)
        rng_path = tmp / rng_file(rank)
        atomic_write(rng_path, lambda part: torch.save(rng_state, part))
        _barrier()
        if rank == 0:
            write_manifest(tmp, state=state, model_config=model_config, train_config=train_config,
                           extra={"precision": engine_precision(engine)})
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
             train_config: dict[str, Any] | None = None, universal: bool = False) -> tuple[TrainState, dict[str, Any]]:
        """Verify ``load_dir/tag`` against this run and load it into ``engine``.

        Refused: a different model config; with ``train_config`` (this run's), a changed
        `RUN_KEYS` entry not in ``checkpoint.allow_changes`` and a TP change that the
        checkpoint cannot be resharded for; a different number of processes unless
        ``universal``. The LR scheduler state is not loaded: the LR is a function of the step
        and the configured schedule (the trainer sets it from the returned step).

        Returns the saved `TrainState` and this rank's RNG state (empty when the checkpoint
        came from a different world size, e.g. a universal checkpoint).
        """
        ckpt_dir = Path(load_dir) / tag
        manifest = read_manifest(ckpt_dir)
        diffs = config_differences(_with_defaults(manifest["model_config"]), model_config)
        if diffs:
            raise CheckpointError(f"checkpoint {ckpt_dir} was saved with a different model config: "
                                  + "; ".join(diffs))
        if train_config is not None:
            check_run_unchanged(ckpt_dir, manifest["train_config"], train_config)
            check_tensor_parallel_change(ckpt_dir, manifest, train_config, universal)
        check_precision(ckpt_dir, manifest, engine_precision(engine), universal,
                        allowed=train_config["checkpoint"]["allow_changes"] if train_config else ())
        if not universal and manifest["world_size"] != _world():
            raise CheckpointError(
                f"checkpoint {ckpt_dir} was written by {manifest['world_size']} processes, this run has "
                f"{_world()}: convert it with `python tools/convert_checkpoint.py to-universal` and load it "
                "with checkpoint.load_universal=true")
        if universal and manifest.get("universal_checkpoint_info"):
            check_vocabulary_rows(ckpt_dir, manifest["universal_checkpoint_info"], engine.module)
        with guarded_torch_load(manifest_digests(ckpt_dir, manifest)):  # DeepSpeed's loads included
            path, _ = engine.load_checkpoint(str(load_dir), tag=tag, load_module_strict=True,
                                             load_lr_scheduler_states=False)
            if path is None:
                raise CheckpointError(f"DeepSpeed could not load checkpoint {ckpt_dir}")
            rng_path = ckpt_dir / rng_file(_rank())
            rng = {} if universal or not rng_path.exists() else _load_rng(rng_path)
        return TrainState(**manifest["train_state"]), rng


def check_run_unchanged(ckpt_dir: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a resume that changes a `RUN_KEYS` entry not in ``checkpoint.allow_changes``."""
    allowed = current["checkpoint"]["allow_changes"]
    old, new = run_defining(saved, allowed), run_defining(current, allowed)
    diffs = config_differences(old, new)
    if diffs:
        raise CheckpointError(
            f"checkpoint {ckpt_dir} was saved by a run with a different training config: {'; '.join(diffs)}. "
            f"Resume with the saved values, or accept the change with "
            f"--set checkpoint.allow_changes=[{','.join(changed_keys(old, new))}]")


def engine_precision(engine) -> str:
    """The precision ``engine`` computes in: ``bf16``, ``fp16`` or ``fp32``."""
    return "bf16" if engine.bfloat16_enabled() else "fp16" if engine.fp16_enabled() else "fp32"


def check_precision(ckpt_dir: Path, manifest: dict[str, Any], precision: str, universal: bool, allowed) -> None:
    """A checkpoint saved in another precision loads only as a universal checkpoint (fp32
    weights and optimizer state per parameter), and then only if ``allowed`` names
    ``parallel.precision``; a plain load of one fails inside DeepSpeed on a missing file or key.
    Manifests written before the key existed are not checked."""
    saved = manifest.get("precision")
    if saved is None or saved == precision:
        return
    change = f"was saved by a {saved} run and this run computes in {precision}"
    if not universal:
        raise CheckpointError(
            f"checkpoint {ckpt_dir} {change}: DeepSpeed stores the optimizer state of the two differently. "
            f"Resume with --set parallel.precision={saved}, or convert it with "
            "`python tools/convert_checkpoint.py to-universal` and load it with checkpoint.load_universal=true "
            "and checkpoint.allow_changes=[parallel.precision]")
    if not covered("parallel.precision", allowed):
        raise CheckpointError(f"universal checkpoint {ckpt_dir} {change}; resume with --set "
                              f"parallel.precision={saved}, or accept the change with "
                              "--set checkpoint.allow_changes=[parallel.precision]")


def check_tensor_parallel_change(ckpt_dir: Path, manifest: dict[str, Any], current: dict[str, Any],
                                 universal: bool) -> None:
    """A TP change needs a universal checkpoint converted with the parameters' TP layout
    (`universal_checkpoint_info`), and ZeRO-1/2 on both sides."""
    saved_parallel, parallel = manifest["train_config"]["parallel"], current["parallel"]
    saved_tp, tp = saved_parallel["tensor_parallel_size"], parallel["tensor_parallel_size"]
    if saved_tp == tp:
        return
    change = f"tensor_parallel_size {saved_tp} -> {tp}"
    if not universal:
        raise CheckpointError(f"checkpoint {ckpt_dir} cannot be loaded with {change}: convert it with "
                              "`python tools/convert_checkpoint.py to-universal` and load it with "
                              "checkpoint.load_universal=true")
    if not manifest.get("universal_checkpoint_info"):
        raise CheckpointError(f"universal checkpoint {ckpt_dir} cannot be resharded ({change}): it was converted "
                              "from a checkpoint saved without the parameters' tensor-parallel layout "
                              f"(universal_checkpoint_info); resume it at tensor_parallel_size={saved_tp}")
    if 3 in (saved_parallel["zero_stage"], parallel["zero_stage"]):
        raise CheckpointError(f"universal checkpoint {ckpt_dir} cannot be resharded ({change}) under ZeRO-3 "
                              f"(saved at stage {saved_parallel['zero_stage']}, this run {parallel['zero_stage']}): "
                              "DeepSpeed's ZeRO-3 universal load does not split parameters over TP ranks")


def check_vocabulary_rows(ckpt_dir: Path, info: dict[str, Any], model: torch.nn.Module) -> None:
    """DeepSpeed's universal load takes a tensor whose shape equals the local shard for an
    unsharded one; a vocabulary table of exactly ``original_vocab_size`` rows per TP rank at
    TP > 1 would then load its first rows on every rank. Refuse that case."""
    if parallel_state.get_tensor_parallel_world_size() == 1:
        return
    patterns = info.get(VOCABULARY_PARAMETER_PATTERNS, [])
    for name, param in model.named_parameters():
        if any(re.match(p, name) for p in patterns) and param.shape[0] == info[ORIGINAL_VOCAB_SIZE]:
            raise CheckpointError(f"universal checkpoint {ckpt_dir}: {name} has {param.shape[0]} rows per TP rank, "
                                  "equal to its vocabulary size, which DeepSpeed's universal load misreads as an "
                                  "unsharded table; use another tensor-parallel size")
