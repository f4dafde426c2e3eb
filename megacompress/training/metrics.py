"""Metrics: one JSON object per line in ``RUN_DIR/metrics.jsonl`` (rank 0), optional TensorBoard.

Training lines (``"split": "train"``) have: ``step`` (optimizer steps done), ``loss`` (sum
of the global batch's token losses / its labelled tokens, over all micro batches and DP
ranks), ``lr``, ``grad_norm`` (before clipping), ``global_batch_size`` (sequences),
``labelled_tokens`` (labels != -100 in the global batch), ``padding_fraction`` (share of
the batch's positions that are padding, ``document_ids == -1``), ``samples_seen``,
``tokens_seen`` (labelled tokens so far), ``tokens_per_s`` (positions processed by all
ranks, since the previous line), ``step_time_s``, ``memory_rss_gb`` (this process), and on
GPU ``memory_cuda_max_gb`` and ``mfu`` (model FLOPs utilisation, from
``megacompress.models.flops.flops_per_token`` and the GPU's peak bf16 FLOP/s).
Validation lines (``"split": "valid"``) have ``step``, ``loss`` (per labelled token over
all evaluation batches and DP ranks) and ``ppl``. A resumed run first writes
``{"split": "event", "event": "resume", "step", "checkpoint"}``, so steps replayed after a
requeue can be told apart. Every line has ``time`` (Unix seconds).

A train line's ``loss`` is the mean per labelled token over the ``log_interval_steps`` steps
since the previous line (``step_loss`` is the last step's alone).

Besides ``metrics.jsonl`` the run directory keeps ``config.yaml`` (the resolved config) and
``train.log`` (everything the trainer printed: banner, log lines, validation, checkpoints),
each line starting with the local time, ``2026-12-07 12:01:02 step 40/120 | loss 6.1234 (mean
of 10 steps) | ...`` (`megacompress.training.log_setup.stamp`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil
import torch
import yaml

from megacompress.atomic import write_text_atomic
from megacompress.training.config import TrainConfigError
from megacompress.training.log_setup import stamp

# Dense bf16 peak FLOP/s per device, by name substring (for the MFU estimate only; another device:
# `parallel.peak_tflops`).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40": 181e12, "A10": 125e12, "V100": 125e12}


def peak_flops() -> float | None:
    """Peak bf16 FLOP/s of the current CUDA device, or None (CPU / unknown GPU: no MFU)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def memory_stats() -> dict[str, float]:
    stats = {"memory_rss_gb": psutil.Process().memory_info().rss / 2**30}
    if torch.cuda.is_available():
        stats["memory_cuda_max_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return stats


class MetricsLogger:
    """Appends metric dicts to ``metrics.jsonl`` (and TensorBoard when asked and installed).

    Only the process constructed with ``enabled=True`` (global rank 0) writes. Lines are
    flushed immediately, so a killed run keeps every line it logged.
    """

    def __init__(self, run_dir: str | Path, *, enabled: bool, tensorboard: bool = False):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = self._console = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")
        self._console = open(self.path.parent / "train.log", "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise TrainConfigError("logging.tensorboard=true needs the tensorboard package: "
                                       "pip install 'megacompress[tensorboard]'") from None
            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps({**record, "time": time.time()}, sort_keys=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            split = record.get("split", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(f"{split}/{key}", value, record["step"])

    def say(self, text: str) -> None:
        """Print ``text`` for the person watching and append it to ``train.log`` (rank 0), every
        line prefixed with the local time."""
        if not self.enabled:
            return
        text = stamp(text)
        print(text, flush=True)
        self._console.write(text + "\n")
        self._console.flush()

    def write_config(self, config: dict[str, Any]) -> None:
        """``RUN_DIR/config.yaml``: the resolved config this run uses (rank 0, atomic)."""
        if self.enabled:
            write_text_atomic(self.path.parent / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def close(self) -> None:
        if self._console is not None:
            self._console.close()
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
