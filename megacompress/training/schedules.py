"""Learning-rate schedule (warmup + linear/cosine decay) and the global-batch-size ramp.

Both are pure functions of the optimizer step and the config, so a resumed run recomputes
them from the step stored in the checkpoint and the config it runs with (a changed
``schedule.train_steps`` reshapes the rest of the run as if it had been set from the start).
"""

from __future__ import annotations

import math

import torch

from megacompress.training.config import ScheduleSection


def learning_rate(step: int, *, lr: float, min_lr: float, warmup_steps: int, train_steps: int,
                  decay: str) -> float:
    """LR for optimizer step ``step`` (0-based).

    Linear warmup ``lr * (step + 1) / warmup_steps`` over the first ``warmup_steps`` steps,
    then ``decay`` from ``lr`` to ``min_lr`` at ``train_steps`` (``linear``, ``cosine`` or
    ``constant``); ``min_lr`` after that.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay == "constant":
        return lr
    span = max(1, train_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if decay == "linear":
        factor = 1.0 - progress
    elif decay == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown decay {decay!r} (expected linear, cosine or constant)")
    return min_lr + (lr - min_lr) * factor


class WarmupDecayLR(torch.optim.lr_scheduler.LRScheduler):
    """`learning_rate` as a torch scheduler (DeepSpeed steps it once per optimizer step).
    Every param group gets the same LR. A resume calls `set_step` instead of loading a saved
    ``state_dict``, which would bring back the saved run's shape."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, lr: float, min_lr: float, warmup_steps: int,
                 train_steps: int, decay: str):
        self.shape = dict(lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, train_steps=train_steps,
                          decay=decay)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        value = learning_rate(self.last_epoch, **self.shape)
        return [value for _ in self.optimizer.param_groups]

    def set_step(self, step: int) -> None:
        """Continue after ``step`` optimizer steps: the next step uses ``learning_rate(step)``
        (also overwriting the LR a loaded optimizer state put in the param groups)."""
        self.last_epoch = step
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr


class BatchSizeRamp:
    """Global batch size per step: linear ramp from ``start`` to ``peak`` (e.g. 64 -> 4096
    reached at 60% of training), rounded down to a multiple of ``unit`` = micro batch x DP.

    Callable, so it plugs into `DataParallelSampler(global_batch_size=...)`. ``start == 0``
    means no ramp (always ``peak``).
    """

    def __init__(self, start: int, peak: int, ramp_steps: int, unit: int):
        if start and (start % unit or peak % unit):
            raise ValueError(f"batch-size ramp: start {start} and peak {peak} must be multiples of "
                             f"micro batch x data-parallel size = {unit}")
        self.start, self.peak, self.ramp_steps, self.unit = start, peak, max(1, ramp_steps), unit

    @classmethod
    def from_schedule(cls, schedule: ScheduleSection, dp_size: int) -> "BatchSizeRamp":
        return cls(schedule.ramp_start_batch_size, schedule.global_batch_size,
                   round(schedule.ramp_fraction * schedule.train_steps), schedule.micro_batch_size * dp_size)

    def __call__(self, step: int) -> int:
        if not self.start or step >= self.ramp_steps:
            return self.peak
        size = self.start + (self.peak - self.start) * step / self.ramp_steps
        return max(self.start, int(size) // self.unit * self.unit)
