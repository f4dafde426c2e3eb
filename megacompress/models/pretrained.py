"""Portable model files: ``DIR/model.safetensors`` + ``DIR/config.json``.

The weights are stored *full*: TP shards gathered along each parameter's
``partition_dim`` and vocabulary tables cut to the real ``vocab_size`` rows (the padding
depends on the TP size), so a directory written at any TP size loads at any other.
Tensor names are ``model.named_parameters()`` names (fp32 or the model's dtype).
Both files are written atomically (temporary file + ``os.replace``) by global rank 0.

``DIR/manifest.json`` (`seal`) records the size and sha256 of every file of the directory
(weights, config, tokenizer files), written last; `verify` checks them before anything is
read, so a corrupt or edited file is refused by name. Whoever adds a file to a model
directory after `save` (a tokenizer, an import's extra files) calls `seal` again. A
directory without a manifest (written before digests were recorded) loads with a warning.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from megacompress.atomic import atomic_write, write_text_atomic
from megacompress.integrity import IntegrityError, check_digest, digest_files
from megacompress.models.config import ConfigError, ModelConfig
from megacompress.parallel import sharding, state
from megacompress.parallel.layers import VocabParallelEmbedding

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


def _vocab_tables(model: nn.Module) -> dict[str, VocabParallelEmbedding]:
    return {f"{name}.weight": m for name, m in model.named_modules() if isinstance(m, VocabParallelEmbedding)}


def _full_shape(name: str, param: torch.Tensor, vocab: dict[str, VocabParallelEmbedding]) -> tuple[int, ...]:
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= state.get_tensor_parallel_world_size()
    if name in vocab:
        shape[0] = vocab[name].num_embeddings
    return tuple(shape)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gathered, unpadded copies of all parameters (collective over the TP group)."""
    vocab = _vocab_tables(model)
    out = {}
    for name, param in model.named_parameters():
        full = sharding.gather_parameter(param)
        if name in vocab:
            full = full[:vocab[name].num_embeddings]
        out[name] = full.contiguous()
    return out


def save(model: nn.Module, config: ModelConfig, directory: str | Path) -> None:
    """Every rank calls this (TP gathers are collective); global rank 0 writes."""
    tensors = full_state_dict(model)
    if state.get_rank() == 0:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        text = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
        seal(directory)
    if dist.is_initialized():
        dist.barrier()  # nobody reads the directory before it is complete


def _sealed_files(directory: Path) -> list[str]:
    """The files a manifest covers: every plain file of the directory but the manifest and
    hidden ones (atomic writes' temporaries)."""
    return sorted(p.name for p in directory.iterdir()
                  if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith("."))


def seal(directory: str | Path) -> None:
    """(Re)write ``DIR/manifest.json``: size and digest of every file in ``directory``."""
    directory = Path(directory)
    names = _sealed_files(directory)
    digests = digest_files(directory, names)
    files = {name: {"size": (directory / name).stat().st_size, "digest": digests[name]} for name in names}
    write_text_atomic(directory / MANIFEST_NAME,
                      json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=2, sort_keys=True) + "\n")


def verify(directory: str | Path) -> bool:
    """Check every file ``DIR/manifest.json`` lists (size, then digest); refuse files the manifest
    does not list. False (with a warning) for a directory without a manifest."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        warnings.warn(f"{directory} has no {MANIFEST_NAME} (written before digests were recorded): its files "
                      "are not verified")
        return False
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        entries = {name: (int(entry["size"]), str(entry["digest"])) for name, entry in files.items()}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IntegrityError(f"{path}: not a model manifest ({type(exc).__name__}: {exc})") from None
    unlisted = sorted(set(_sealed_files(directory)) - set(entries))
    if unlisted:
        raise IntegrityError(f"{path} does not list {', '.join(unlisted)}: files added after the directory was "
                             f"written are not trusted (remove them, or re-seal with "
                             f"megacompress.models.pretrained.seal if you made them)")
    for name, (size, digest) in entries.items():
        if "/" in name or name.startswith("."):
            raise IntegrityError(f"{path}: {name!r} is not a file of {directory}")
        file = directory / name
        if not file.is_file():
            raise IntegrityError(f"{file} is missing (listed in {path})")
        if file.stat().st_size != size:
            raise IntegrityError(f"{file} is corrupt: {file.stat().st_size} bytes, {path} records {size}")
        check_digest(file, digest)
    return True


def load_config(directory: str | Path, expected: ModelConfig | None = None) -> ModelConfig:
    """Read ``config.json``; if ``expected`` is given, any differing field is an error."""
    path = Path(directory) / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found (is {directory} a save_pretrained directory?)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    try:
        config = ModelConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if expected is not None and expected != config:
        saved, wanted = config.to_dict(), expected.to_dict()
        diffs = [f"{k} (saved {saved[k]!r}, expected {wanted[k]!r})" for k in saved if saved[k] != wanted[k]]
        raise ConfigError(f"{path}: model config differs in {', '.join(diffs)}")
    return config


def load_weights(model: nn.Module, directory: str | Path, *, verified: bool = False) -> None:
    """Copy full weights from ``model.safetensors`` into this rank's shards of ``model``
    (the directory's `verify` first, unless the caller has just done it)."""
    if not verified:
        verify(directory)
    path = Path(directory) / WEIGHTS_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{path}: cannot read safetensors file ({e})") from None
    vocab = _vocab_tables(model)
    params = dict(model.named_parameters())
    problems = []
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    for name in sorted(set(params) & set(tensors)):
        want = _full_shape(name, params[name], vocab)
        if tuple(tensors[name].shape) != want:
            problems.append(f"{name}: shape {tuple(tensors[name].shape)} in file, model needs {want}")
    if problems:
        raise ConfigError(f"{path}: does not match the model: " + "; ".join(problems))
    with torch.no_grad():
        for name, param in params.items():
            full = tensors[name]
            if name in vocab:
                padding = vocab[name].padded_num_embeddings - full.shape[0]
                full = torch.cat([full, full.new_zeros(padding, *full.shape[1:])])
            if getattr(param, "tensor_model_parallel", False):
                full = sharding.shard(full, param.partition_dim)
            param.copy_(full)
