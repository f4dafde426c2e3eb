"""Architectures: ``ModelConfig.architecture`` name -> model class, batch inputs and masks.

The training engine, checkpoint export, `load_pretrained` and the generate CLI know
models only through this table, so a method adds a model by registering it in its
own model file::

    @register_architecture("gpt", inputs=("input_ids", "position_ids", "document_ids", "labels"),
                           required=("input_ids",), mask_kinds=("causal", "document_causal"))
    class GPT(nn.Module): ...

``config=``: the `ModelConfig` subclass with the architecture's own fields (default
`ModelConfig`). A registered class is built as ``cls(config, seed=seed)``, runs
``forward(**batch_inputs)`` -> `ModelOutput`, builds its attention masks from those
inputs in ``prepare_mask`` (the kinds listed in ``mask_kinds``), and may check
architecture-specific config fields in ``validate_config(config) -> list[str]``.
A batch key that the architecture does not take is an error (`select_inputs`), never
dropped: a dataset that yields ``eos_mask`` feeds a model that uses sentence boundaries.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megacompress import plugins
from megacompress.models.config import ConfigError, ModelConfig


@dataclass(frozen=True)
class Architecture:
    name: str
    model_class: type
    inputs: tuple[str, ...]      # batch keys forward() takes (training and evaluation)
    required: tuple[str, ...]    # of those, the ones every batch must have
    mask_kinds: tuple[str, ...]  # registered mask kinds (megacompress.attention.masks) its prepare_mask builds
    config: type = ModelConfig   # its config class: ModelConfig or a subclass with its own fields
    # Its weights run as a Hugging Face Llama (same parameters, causal attention at inference):
    # ``convert export-hf`` accepts it.
    llama_compatible: bool = False

    def validate_config(self, config: ModelConfig) -> list[str]:
        check = getattr(self.model_class, "validate_config", None)
        return list(check(config)) if check is not None else []


_ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(name: str, *, inputs: Iterable[str], required: Iterable[str] = ("input_ids",),
                          mask_kinds: Iterable[str], config: type = ModelConfig,
                          llama_compatible: bool = False) -> Callable[[type], type]:
    """Class decorator adding ``name`` to the table (a name can be registered once)."""
    from megacompress.attention import masks

    inputs, required, mask_kinds = tuple(inputs), tuple(required), tuple(mask_kinds)
    unknown = []
    for kind in mask_kinds:
        try:
            masks.get_mask_kind(kind)
        except ValueError:
            unknown.append(kind)
    if not (isinstance(config, type) and issubclass(config, ModelConfig)):
        raise ValueError(f"architecture {name!r}: config must be ModelConfig or a subclass, got {config!r}")
    if unknown or not set(required) <= set(inputs):
        raise ValueError(f"architecture {name!r}: unknown mask kinds {unknown} or required inputs "
                         f"{sorted(set(required) - set(inputs))} not among its inputs")

    def register(cls: type) -> type:
        if name in _ARCHITECTURES and _ARCHITECTURES[name].model_class is not cls:
            raise ValueError(f"architecture {name!r} is already registered "
                             f"({_ARCHITECTURES[name].model_class.__qualname__})")
        _ARCHITECTURES[name] = Architecture(name, cls, inputs, required, mask_kinds, config, llama_compatible)
        cls.architecture = name
        return cls

    return register


def architecture_names() -> list[str]:
    plugins.load_methods()
    return sorted(_ARCHITECTURES)


def get_architecture(name: str) -> Architecture:
    arch = plugins.lookup(_ARCHITECTURES, name)
    if arch is None:
        raise ConfigError(f"unknown model architecture {name!r}; registered: {', '.join(architecture_names())}")
    return arch


def config_class(architecture: str) -> type:
    """The config class of ``architecture``; `ModelConfig` for a name that is not registered
    (its validation then names the registered ones)."""
    arch = plugins.lookup(_ARCHITECTURES, architecture)
    return ModelConfig if arch is None else arch.config


def config_field_types() -> dict[str, Any]:
    """Every model field of every registered architecture -> its type (YAML ``model.*`` keys)."""
    plugins.load_methods()
    types: dict[str, Any] = {}
    for arch in _ARCHITECTURES.values():
        types.update(typing.get_type_hints(arch.config))
    return types


def other_architectures_defaults(config: type) -> dict[str, Any]:
    """Fields that other registered config classes add over `ModelConfig` -> their defaults."""
    plugins.load_methods()
    own = {f.name for f in dataclasses.fields(config)}
    return {f.name: f.default for arch in _ARCHITECTURES.values() for f in dataclasses.fields(arch.config)
            if f.name not in own and f.default is not dataclasses.MISSING}


def build_model(config: ModelConfig, seed: int = 0):
    """A freshly initialised model of ``config.architecture`` (depends only on config and seed)."""
    return get_architecture(config.architecture).model_class(config, seed=seed)


def select_inputs(architecture: str, batch: Mapping[str, Any], *, source: str = "the batch") -> dict[str, Any]:
    """The forward() keyword arguments of ``batch``; any key the model does not take is an error."""
    arch = get_architecture(architecture)
    extra = sorted(set(batch) - set(arch.inputs))
    missing = [k for k in arch.required if k not in batch]
    if extra or missing:
        problems = []
        if extra:
            problems.append(f"has key(s) {extra} that the model does not take")
        if missing:
            problems.append(f"lacks required key(s) {missing}")
        raise ConfigError(f"{source} {' and '.join(problems)} (architecture {architecture!r} takes "
                          f"{list(arch.inputs)}); pick a data.kind / model.architecture pair that agree")
    return {k: batch[k] for k in arch.inputs if k in batch}


def load_pretrained(directory: str | Path, *, config: ModelConfig | None = None, expected: type | None = None):
    """A model saved by ``save_pretrained``, of the architecture its ``config.json`` names,
    sharded for the current TP size. ``config``: if given it must equal the saved one;
    ``expected``: the class the caller needs (else an error naming both architectures)."""
    from megacompress.models import pretrained
    from megacompress.parallel import state

    if not state.is_initialized():  # a notebook or CLI user need not set up process groups
        state.initialize()
    pretrained.verify(directory)  # digests first: a corrupt file is named before it is parsed
    saved = pretrained.load_config(directory, expected=config)
    cls = get_architecture(saved.architecture).model_class
    if expected is not None and not issubclass(cls, expected):
        raise ConfigError(f"{Path(directory) / pretrained.CONFIG_NAME}: architecture {saved.architecture!r} "
                          f"is not a {expected.__name__}")
    model = cls(saved)
    pretrained.load_weights(model, directory, verified=True)
    return model
