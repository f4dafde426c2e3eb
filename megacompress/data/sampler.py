"""Data-parallel, resumable batch sampler with an optional global-batch-size schedule.

Datasets are already shuffled, so the sampler walks dataset indices in order.
Step ``k`` consumes the next ``G_k`` indices (``G_k`` = ``global_batch_size`` or
``global_batch_size(k)``), a global batch of ``G_k = micro_batch_size *
grad_accum_k * dp_size``. Data-parallel rank r owns the contiguous block
``[start + r * G_k / dp, start + (r + 1) * G_k / dp)`` of it and yields it as
``grad_accum_k`` micro batches of ``micro_batch_size`` indices. Hence, over all
ranks, every index is used exactly once, in order, whatever the schedule.

Resume: pass the ``consumed_samples`` stored with the checkpoint (the sum of
``G_k`` over completed steps). The sampler replays the schedule from step 0 to
find the step that starts there, and raises if ``consumed_samples`` is not a
step boundary (e.g. the schedule changed between runs). A trailing global batch
that does not fit in ``total_samples`` is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch.utils.data import Sampler

BatchSizeSchedule = int | Callable[[int], int]


class DataParallelSampler(Sampler[list[int]]):
    """Yields this rank's micro batches (lists of dataset indices), step after step.

    Use as ``DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)``;
    ``micro_batches_per_step(k)`` tells the engine how many micro batches step
    ``k`` has on each rank (its gradient-accumulation count).
    """

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 global_batch_size: BatchSizeSchedule, data_parallel_rank: int = 0,
                 data_parallel_size: int = 1):
        if total_samples < 0 or consumed_samples < 0:
            raise ValueError(f"total_samples ({total_samples}) and consumed_samples ({consumed_samples}) "
                             "must be non-negative")
        if micro_batch_size < 1 or data_parallel_size < 1:
            raise ValueError(f"micro_batch_size ({micro_batch_size}) and data_parallel_size "
                             f"({data_parallel_size}) must be >= 1")
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(f"data_parallel_rank {data_parallel_rank} outside [0, {data_parallel_size})")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.schedule = global_batch_size
        self.rank = data_parallel_rank
        self.world = data_parallel_size
        self.start_step = self._step_at(consumed_samples)

    def global_batch_size(self, step: int) -> int:
        """``G_step``, checked to be a positive multiple of micro_batch_size * dp_size."""
        size = self.schedule(step) if callable(self.schedule) else self.schedule
        unit = self.micro_batch_size * self.world
        if size < unit or size % unit:
            raise ValueError(f"global batch size {size} at step {step} is not a positive multiple of "
                             f"micro_batch_size * data_parallel_size = {unit}")
        return size

    def micro_batches_per_step(self, step: int) -> int:
        """Gradient-accumulation count of ``step`` on every rank."""
        return self.global_batch_size(step) // (self.micro_batch_size * self.world)

    def _step_at(self, consumed: int) -> int:
        step, position = 0, 0
        while position < consumed:
            position += self.global_batch_size(step)
            step += 1
        if position != consumed:
            raise ValueError(f"consumed_samples {consumed} is not a step boundary of the batch-size schedule "
                             f"(steps end at ... {position - self.global_batch_size(step - 1)}, {position})")
        return step

    def _steps(self) -> Iterator[tuple[int, int, int]]:
        """(step, first index, global batch size) of every full step from the resume point."""
        step, start = self.start_step, self.consumed_samples
        while True:
            size = self.global_batch_size(step)
            if start + size > self.total_samples:
                return
            yield step, start, size
            step, start = step + 1, start + size

    def __iter__(self) -> Iterator[list[int]]:
        for _, start, size in self._steps():
            share = size // self.world
            first = start + self.rank * share
            for micro in range(first, first + share, self.micro_batch_size):
                yield list(range(micro, micro + self.micro_batch_size))

    def __len__(self) -> int:
        return sum(size // self.world // self.micro_batch_size for _, _, size in self._steps())
