"""Dataset kinds: the ``data.kind`` name -> how to build a dataset over one shard.

A kind is registered once, with ``register_dataset_kind(name, build, batch_keys, optional_keys)``:

* ``build(prefix, meta, config, seq_length, num_samples, document_range, tokenizer, cache_dir)``
  returns a map-style dataset of ``num_samples`` samples over the half-open
  ``document_range`` of shard ``prefix``. ``meta`` is the shard's metadata
  (``PREFIX.meta.json``, or for a shard without one the flags the builder
  inferred: ``{"flags": {"append_eod": bool}}``), ``config`` the ``DataConfig``,
  ``cache_dir`` the index-cache directory;
* ``batch_keys``: the sample keys every dataset of the kind yields;
  ``optional_keys``: keys it yields only for some data (``document``'s
  ``eos_mask``, present with the sentence sidecar).

Every dataset object has a ``batch_keys`` attribute, the exact key set of its
samples (``dataset_batch_keys`` reads it), so a trainer can check a dataset
against the inputs its model declares. Generic kinds, registered at the end of
this module: ``gpt`` (``GPTDataset``) and ``document`` (``DocumentDataset``). A method
registers its own kinds in its package (`megacompress.plugins`); the builder needs no change.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

from megacompress import plugins
from megacompress.data.collate import TOKEN_BATCH_KEYS
from megacompress.data.document_dataset import (SENTENCE_BATCH_KEYS, DocumentDataset, DocumentDatasetConfig,
                                                check_sidecar_files, eos_prefix)
from megacompress.data.gpt_dataset import GPTDataset, GPTDatasetConfig
from megacompress.errors import UserError


class DataConfigError(UserError, ValueError):
    """The data config or a shard's metadata is unusable; the message names the file or key."""


@dataclass(frozen=True)
class DatasetKind:
    """One registered kind (see the module docstring for ``build``'s signature)."""

    name: str
    build: Callable
    batch_keys: frozenset[str]
    optional_keys: frozenset[str] = frozenset()


_KINDS: dict[str, DatasetKind] = {}


def register_dataset_kind(name: str, build: Callable, batch_keys: Collection[str],
                          optional_keys: Collection[str] = ()) -> DatasetKind:
    """Register kind ``name``; ValueError if the name is taken."""
    if name in _KINDS:
        raise ValueError(f"dataset kind {name!r} is already registered")
    kind = DatasetKind(name, build, frozenset(batch_keys), frozenset(optional_keys))
    _KINDS[name] = kind
    return kind


def dataset_kind(name: str) -> DatasetKind:
    """The registered kind ``name``; ``DataConfigError`` listing the registered kinds otherwise."""
    kind = plugins.lookup(_KINDS, name)
    if kind is None:
        raise DataConfigError(f"data.kind {name!r}: unknown dataset kind; registered kinds: {', '.join(_KINDS)}")
    return kind


class _KindNames(Collection):
    """Live read-only view of the registered names: ``in``, iteration, and a tuple-like repr."""

    def __contains__(self, name) -> bool:
        plugins.load_methods()
        return name in _KINDS

    def __iter__(self) -> Iterator[str]:
        plugins.load_methods()
        return iter(tuple(_KINDS))

    def __len__(self) -> int:
        plugins.load_methods()
        return len(_KINDS)

    def __repr__(self) -> str:
        plugins.load_methods()
        return repr(tuple(_KINDS))


# Kept as a name (training/config.py validates data.kind with it); it follows later registrations.
DATASET_KINDS = _KindNames()


def dataset_batch_keys(dataset) -> frozenset[str]:
    """The keys every sample of ``dataset`` has (its ``batch_keys``); TypeError if it does not say."""
    keys = getattr(dataset, "batch_keys", None)
    if keys is None:
        raise TypeError(f"{type(dataset).__name__} has no batch_keys attribute; datasets must declare their keys")
    return frozenset(keys)


def _build_gpt(prefix, meta, config, seq_length, num_samples, document_range, tokenizer, cache_dir):
    cfg = GPTDatasetConfig(seq_length=seq_length, eod_id=tokenizer.eod, num_samples=num_samples,
                           seed=config.seed, add_eod=not meta["flags"]["append_eod"], shuffle=config.shuffle,
                           document_range=document_range)
    return GPTDataset(prefix, cfg, cache_dir)


def _build_document(prefix, meta, config, seq_length, num_samples, document_range, tokenizer, cache_dir):
    if config.use_sentences is None and meta.get("eos_sidecar"):
        # "Use the sidecar when present" must not quietly train without the sentences the shard was packed with.
        check_sidecar_files(eos_prefix(prefix), recorded_in=f"{prefix}.meta.json")
    cfg = DocumentDatasetConfig(seq_length=seq_length, pad_id=tokenizer.special_id("pad"),
                                num_samples=num_samples, seed=config.seed, shuffle=config.shuffle,
                                document_range=document_range, use_sentences=config.use_sentences,
                                eos_id=tokenizer.special_id("eos"))
    return DocumentDataset(prefix, cfg, cache_dir)


register_dataset_kind("gpt", _build_gpt, TOKEN_BATCH_KEYS)
register_dataset_kind("document", _build_document, TOKEN_BATCH_KEYS, SENTENCE_BATCH_KEYS - TOKEN_BATCH_KEYS)
