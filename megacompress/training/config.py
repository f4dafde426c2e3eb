"""Training configuration: dataclasses loaded from YAML, with dotted command-line overrides.

A config file mirrors `TrainConfig` section by section::

    model:      {preset: tiny, max_seq_len: 128}   # a ModelConfig preset + ModelConfig field overrides
    data:       {data_path: [runs/demo/data/train_text_document], kind: gpt, split: "98,2,0"}
    tokenizer:  {kind: gpt2}
    optimizer:  {lr: 6.0e-4, ...}
    schedule:   {train_steps: 100, global_batch_size: 8, micro_batch_size: 2, ...}
    parallel:   {tensor_parallel_size: 1, zero_stage: 2, ...}
    checkpoint: {interval: 50, keep_last: 3, ...}
    logging:    {run_dir: runs/tiny, log_interval: 1, ...}
    eval:       {interval: 50, iters: 4, data_path: [...]}
    seed: 1234

Overrides (``--set optimizer.lr=3e-4``) are converted by the type of the target field
(``int``, ``float``, ``bool``, ``str``, ``X | None``, lists); the ``model`` section accepts
every `ModelConfig` field. Unknown keys raise `TrainConfigError` naming the key and the
closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from megacompress.errors import UserError
from megacompress.data.builder import DATASET_KINDS, DataConfig
from megacompress.models.config import ModelConfig
from megacompress.models.registry import config_field_types


class TrainConfigError(UserError, ValueError):
    """An invalid training configuration; the message names the offending key."""


@dataclass
class ModelSection:
    """``preset`` names a `ModelConfig` preset; ``overrides`` replace individual fields of it.
    ``init_from``: a ``save_pretrained`` directory whose weights start the run (fine-tuning,
    e.g. a model a method's ``init`` subcommand made); empty = seeded random init."""

    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str = ""

    def build(self) -> ModelConfig:
        return ModelConfig.from_preset(self.preset, **self.overrides)


MODEL_SECTION_KEYS = ("preset", "init_from")  # model-section keys that are not ModelConfig fields


@dataclass
class TokenizerSection:
    """The tokenizer the shards were made with (``megacompress.data.tokenizers.build_tokenizer``);
    the data builder checks it against each shard's ``meta.json``."""

    kind: str = "gpt2"
    model_path: str = ""


@dataclass
class OptimizerSection:
    """AdamW; weight decay applies to matrices only (not norms). ``implementation``: torch's
    ``fused`` kernel (default; on a 152 M-element flat tensor on one CPU core 0.07 s a step against
    0.73 s for ``for-loop``, the single-tensor path, and 0.51 s for ``foreach``), or one of those."""

    lr: float = 6.0e-4
    min_lr: float = 6.0e-5
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1.0e-8
    weight_decay: float = 0.01
    clip_grad: float = 0.5
    implementation: str = "fused"


OPTIMIZER_IMPLEMENTATIONS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}


@dataclass
class ScheduleSection:
    """Steps, learning-rate shape and batch sizes (in sequences).

    The batch-size ramp (e.g. 64 -> 4096 over the first 60% of training) is on when
    ``ramp_start_batch_size > 0``: the global batch grows linearly, in multiples of
    ``micro_batch_size * dp``, from ``ramp_start_batch_size`` to ``global_batch_size``,
    reached at step ``ramp_fraction * train_steps``.
    """

    train_steps: int = 100
    warmup_steps: int = 10
    decay: str = "linear"
    global_batch_size: int = 8
    micro_batch_size: int = 2
    ramp_start_batch_size: int = 0
    ramp_fraction: float = 0.6


RECOMPUTE_MODES = ("none", "full", "selective")  # parallel.recompute (`megacompress.training.recompute`)


@dataclass
class ParallelSection:
    """``ds_config`` is a JSON template from ``ds_configs/`` (default: ``zero{zero_stage}.json``);
    ``precision`` ``auto`` = bf16 on GPU, fp32 on CPU; ``recompute``: activation recompute,
    ``none`` | ``full`` (every block) | ``selective`` (the attention core), see
    `megacompress.training.recompute`; ``sequence_parallel``: with TP > 1, shard the norm /
    residual activations along the sequence over the TP group (`megacompress.parallel.sequence`);
    ``compile``: each transformer block through ``torch.compile`` (`megacompress.training.compile`)."""

    tensor_parallel_size: int = 1
    zero_stage: int = 2
    ds_config: str = ""
    precision: str = "auto"
    recompute: str = "none"
    sequence_parallel: bool = False
    compile: bool = False
    peak_tflops: float = 0.0  # per device, for MFU; 0: the device table (H100/H200/A100 bf16, ...); CPU: none


@dataclass
class CheckpointSection:
    """``dir`` defaults to ``RUN_DIR/checkpoints``; ``interval`` 0 = only at the end and on signals.
    ``resume``: load ``latest`` from ``dir`` when it exists; otherwise start from ``load_dir`` /
    ``load_tag`` if given (``load_universal``: a universal checkpoint made by
    ``tools/convert_checkpoint.py to-universal``); ``load_tag`` without ``load_dir``: that tag
    of ``dir`` (to resume when ``latest`` is unusable). ``start_over``: start from step 0 (or
    ``load_dir``) although ``dir`` holds an earlier run's committed checkpoints that cannot or
    should not be resumed (``latest`` unusable, or ``resume=false``); they are moved to
    ``dir/superseded-TIME/``. Without it such a start is refused (docs/training.md, "latest").
    ``allow_changes``: dotted keys or section names (``[schedule.train_steps, data]``) whose
    value may differ from the checkpoint's run; any other change of a run-defining key
    (`checkpoint.RUN_KEYS`) refuses the resume."""

    dir: str = ""
    interval: int = 0
    keep_last: int = 2
    resume: bool = True
    load_dir: str = ""
    load_tag: str = ""
    load_universal: bool = False
    start_over: bool = False
    allow_changes: list[str] = field(default_factory=list)


@dataclass
class EvalSection:
    """Validation loss every ``interval`` steps (0 = only at the end) over ``iters`` micro
    batches per DP rank. ``data_path``: validation shards (same syntax as ``data.data_path``);
    empty = the valid part of ``data.split``."""

    interval: int = 0
    iters: int = 4
    data_path: list = field(default_factory=list)


@dataclass
class LoggingSection:
    """``log_interval`` steps between metric lines (``RUN_DIR/metrics.jsonl``)."""

    run_dir: str = "runs/default"
    log_interval: int = 1
    tensorboard: bool = False
    progress_bar: bool = True


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    eval: EvalSection = field(default_factory=EvalSection)
    seed: int = 1234

    @property
    def run_dir(self) -> Path:
        return Path(self.logging.run_dir)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir) if self.checkpoint.dir else self.run_dir / "checkpoints"

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict in the YAML layout (``model`` flattened to preset + fields)."""
        out = dataclasses.asdict(self)
        out["model"] = {"preset": self.model.preset, **self.model.overrides}
        if self.model.init_from:
            out["model"]["init_from"] = self.model.init_from
        return out

    def validate(self) -> None:
        """Cross-field checks that need no process group (DP-dependent ones are in ds_config)."""
        s, o = self.schedule, self.optimizer
        if s.warmup_steps > s.train_steps > 0:  # e.g. a short --set schedule.train_steps=5 run of a config
            warnings.warn(f"schedule.warmup_steps={s.warmup_steps} is longer than schedule.train_steps="
                          f"{s.train_steps}: warmup clamped to {s.train_steps} steps")
            s.warmup_steps = s.train_steps
        if self.parallel.sequence_parallel and self.parallel.tensor_parallel_size == 1:
            warnings.warn("parallel.sequence_parallel has no effect with parallel.tensor_parallel_size=1")
        checks = [
            (s.train_steps > 0, "schedule.train_steps must be > 0"),
            (s.warmup_steps >= 0, "schedule.warmup_steps must be >= 0"),
            (s.decay in ("linear", "cosine", "constant"), "schedule.decay must be linear, cosine or constant"),
            (s.micro_batch_size > 0, "schedule.micro_batch_size must be > 0"),
            (s.global_batch_size >= s.micro_batch_size, "schedule.global_batch_size must be >= micro_batch_size"),
            (0 <= s.ramp_start_batch_size <= s.global_batch_size,
             "schedule.ramp_start_batch_size must be in [0, global_batch_size]"),
            (0 < s.ramp_fraction <= 1, "schedule.ramp_fraction must be in (0, 1]"),
            (0 <= o.min_lr <= o.lr, "optimizer.min_lr must be in [0, optimizer.lr]"),
            (o.clip_grad >= 0, "optimizer.clip_grad must be >= 0 (0 = no clipping)"),
            (o.implementation in OPTIMIZER_IMPLEMENTATIONS,
             f"optimizer.implementation must be one of {', '.join(OPTIMIZER_IMPLEMENTATIONS)}"),
            (self.parallel.zero_stage in (0, 1, 2, 3), "parallel.zero_stage must be 0, 1, 2 or 3"),
            (self.parallel.precision in ("auto", "fp32", "bf16"), "parallel.precision must be auto, fp32 or bf16"),
            (self.parallel.peak_tflops >= 0, "parallel.peak_tflops must be >= 0 (0: from the device table)"),
            (self.parallel.recompute in RECOMPUTE_MODES,
             f"parallel.recompute must be {', '.join(RECOMPUTE_MODES[:-1])} or {RECOMPUTE_MODES[-1]}"),
            (self.data.kind in DATASET_KINDS, f"data.kind must be one of {DATASET_KINDS}"),
            (self.eval.iters >= 1, "eval.iters must be >= 1"),
            (self.checkpoint.keep_last >= 1, "checkpoint.keep_last must be >= 1"),
            (not self.checkpoint.load_universal or bool(self.checkpoint.load_dir),
             "checkpoint.load_universal needs checkpoint.load_dir"),
            (not self.checkpoint.load_tag or re.fullmatch(r"global_step\d+", self.checkpoint.load_tag) is not None,
             "checkpoint.load_tag must be a checkpoint tag such as global_step40"),
        ]
        errors = [msg for ok, msg in checks if not ok]
        if errors:
            raise TrainConfigError("invalid training config: " + "; ".join(errors))
        self._check_allow_changes()
        self.model.build()  # ModelConfig validates its own fields

    def _check_allow_changes(self) -> None:
        """Every ``checkpoint.allow_changes`` entry is a dotted key or a section name."""
        known = _dotted_keys(TrainConfig) + [f.name for f in dataclasses.fields(TrainConfig)]
        for key in self.checkpoint.allow_changes:
            if key not in known:
                raise TrainConfigError(f"checkpoint.allow_changes: {_unknown(key, known)}")


def _unknown(key: str, known: list[str]) -> TrainConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return TrainConfigError(f"unknown config key {key!r}{hint}")


def _dotted_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, annotation in typing.get_type_hints(cls).items():
        if annotation is ModelSection:
            keys += [f"model.{n}" for n in [*MODEL_SECTION_KEYS, *config_field_types()]]
        elif dataclasses.is_dataclass(annotation):
            keys += _dotted_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def convert(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a ``--set`` string) to the field type ``annotation``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return convert(value, options[0], key)
    if annotation in (list, dict):
        parsed = yaml.safe_load(value) if isinstance(value, str) else value
        if not isinstance(parsed, annotation):
            raise TrainConfigError(f"config key {key!r} expects a {annotation.__name__}, got {value!r}")
        return parsed
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise TrainConfigError(f"config key {key!r} expects a list, got {value!r}")
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        return origin(convert(v, item, key) for v in value)
    if annotation is Any:
        return yaml.safe_load(value) if isinstance(value, str) else value
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return "" if value is None else str(value)
    except (TypeError, ValueError):
        raise TrainConfigError(f"config key {key!r} expects {annotation.__name__}, got {value!r}") from None
    return value


def _build_section(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise TrainConfigError(f"config section {prefix.rstrip('.')!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = list(hints)
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise _unknown(prefix + key, [prefix + k for k in known])
        kwargs[key] = convert(value, hints[key], prefix + key)
    return cls(**kwargs)


def _build_model(data: dict[str, Any]) -> ModelSection:
    if not isinstance(data, dict):
        raise TrainConfigError(f"config section 'model' must be a mapping, got {data!r}")
    hints = config_field_types()  # the fields of every registered architecture
    known = [*MODEL_SECTION_KEYS, *hints]
    overrides = {}
    for key, value in data.items():
        if key not in known:
            raise _unknown(f"model.{key}", [f"model.{k}" for k in known])
        if key not in MODEL_SECTION_KEYS:
            overrides[key] = convert(value, hints[key], f"model.{key}")
    return ModelSection(preset=str(data.get("preset", ModelSection.preset)), overrides=overrides,
                        init_from=str(data.get("init_from") or ""))


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build and validate a `TrainConfig` from a nested dict (the YAML layout)."""
    hints = typing.get_type_hints(TrainConfig)
    kwargs = {}
    for key, value in (data or {}).items():
        if key not in hints:
            raise _unknown(key, _dotted_keys(TrainConfig) + list(hints))
        if key == "model":
            kwargs[key] = _build_model(value)
        elif dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build_section(hints[key], value, f"{key}.")
        else:
            kwargs[key] = convert(value, hints[key], key)
    config = TrainConfig(**kwargs)
    config.validate()
    return config


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` strings to a nested dict (values stay strings; `from_dict` converts)."""
    known = _dotted_keys(TrainConfig)
    for item in overrides:
        if "=" not in item:
            raise TrainConfigError(f"override {item!r} is not of the form section.key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if key not in known:
            raise _unknown(key, known)
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TrainConfigError(f"config key {part!r} is not a section (while applying {item!r})")
        node[leaf] = value
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise TrainConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise TrainConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise TrainConfigError(f"config file {path} must hold a mapping of sections")
    try:
        return from_dict(apply_overrides(data, overrides or []))
    except TrainConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise TrainConfigError(f"{where}{exc}") from None
