"""Build the DeepSpeed config dict from a JSON template in ``ds_configs/`` and the run's sizes.

Templates hold only what is a real choice (ZeRO stage, offload, bucket sizes, bf16).
Everything that follows from the training config is derived here, never written by hand:

* ``train_micro_batch_size_per_gpu`` = ``schedule.micro_batch_size``;
* ``gradient_accumulation_steps`` = global batch / (micro batch * DP size), which must divide;
* ``train_batch_size`` = micro batch * accumulation steps * DP size (the global batch);
* ``gradient_clipping`` = ``optimizer.clip_grad``;
* ``bf16.enabled`` from ``parallel.precision`` (``auto``: the template's choice on GPU,
  fp32 on CPU, where bf16 matmuls are slow and DeepSpeed's CPU paths are fp32).

With a batch-size ramp the engine starts at the ramp's first batch size and calls
``engine.set_train_batch_size`` as it grows (only the accumulation steps change).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megacompress.training.config import TrainConfig, TrainConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
DS_CONFIG_DIR = REPO_ROOT / "ds_configs"

# Keys derived from the training config; a template that sets them is refused.
DERIVED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping")


def accumulation_steps(global_batch_size: int, micro_batch_size: int, dp_size: int) -> int:
    """Gradient-accumulation steps for one optimizer step; raises if the sizes do not divide."""
    unit = micro_batch_size * dp_size
    if global_batch_size <= 0 or global_batch_size % unit:
        raise TrainConfigError(
            f"global batch size {global_batch_size} is not a positive multiple of micro batch size "
            f"{micro_batch_size} x data-parallel size {dp_size} = {unit}")
    return global_batch_size // unit


def template_path(config: TrainConfig) -> Path:
    """The template file: ``parallel.ds_config`` or ``ds_configs/zero{stage}.json``."""
    if config.parallel.ds_config:
        path = Path(config.parallel.ds_config)
        return path if path.is_absolute() or path.exists() else REPO_ROOT / path
    return DS_CONFIG_DIR / f"zero{config.parallel.zero_stage}.json"


def load_template(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TrainConfigError(f"DeepSpeed config template {path} does not exist "
                               f"(available: {', '.join(p.name for p in sorted(DS_CONFIG_DIR.glob('*.json')))})")
    try:
        template = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TrainConfigError(f"DeepSpeed config template {path} is not valid JSON: {exc}") from None
    handwritten = [k for k in DERIVED_KEYS if k in template]
    if handwritten:
        raise TrainConfigError(f"DeepSpeed config template {path} sets {', '.join(handwritten)}: these are "
                               "derived from the training config (schedule.*, optimizer.clip_grad); remove them")
    return template


def build_ds_config(config: TrainConfig, dp_size: int, *, on_gpu: bool,
                    global_batch_size: int | None = None, load_universal: bool = False) -> dict[str, Any]:
    """The full DeepSpeed config for ``dp_size`` data-parallel ranks.

    ``global_batch_size`` defaults to ``schedule.global_batch_size`` (pass the ramp's
    starting size when ramping). The peak size is checked too, so a ramp that could
    never reach it fails here, before any training. ``load_universal``: the run starts from
    a universal checkpoint (DeepSpeed's ``checkpoint.load_universal``).
    """
    path = template_path(config)
    ds = load_template(path)
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if config.parallel.ds_config and stage != config.parallel.zero_stage:
        raise TrainConfigError(f"DeepSpeed config template {path} uses ZeRO stage {stage} but "
                               f"parallel.zero_stage is {config.parallel.zero_stage}; make them agree")
    micro = config.schedule.micro_batch_size
    accumulation_steps(config.schedule.global_batch_size, micro, dp_size)
    batch = global_batch_size or config.schedule.global_batch_size
    ds["train_micro_batch_size_per_gpu"] = micro
    ds["gradient_accumulation_steps"] = accumulation_steps(batch, micro, dp_size)
    ds["train_batch_size"] = batch
    ds["gradient_clipping"] = config.optimizer.clip_grad

    precision = config.parallel.precision
    if precision == "auto":
        bf16 = on_gpu and ds.get("bf16", {"enabled": True}).get("enabled", False)
    else:
        bf16 = precision == "bf16"
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": bool(bf16)}
    if load_universal:
        ds["checkpoint"] = {**ds.get("checkpoint", {}), "load_universal": True}
    return ds
