"""DataParallelSampler: DP slicing, exact resume, batch-size ramps."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from megacompress.data.collate import collate
from megacompress.data.sampler import DataParallelSampler


def ramp(step: int) -> int:
    """GPTHF-style ramp in miniature: 4, 4, 8, 8, 16, ..."""
    return min(4 * 2 ** (step // 2), 16)


def run_steps(total, consumed, micro, gbs, rank, world):
    """Group one rank's micro batches into steps, as an engine would."""
    sampler = DataParallelSampler(total, consumed, micro, gbs, rank, world)
    batches, steps, step = iter(sampler), [], sampler.start_step
    while True:
        chunk = [next(batches, None) for _ in range(sampler.micro_batches_per_step(step))]
        if chunk[0] is None:
            return steps
        steps.append(chunk)
        step += 1


@pytest.mark.parametrize("gbs", [8, ramp])
@pytest.mark.parametrize("world", [1, 2])
def test_ranks_cover_each_sample_once_in_order(gbs, world):
    total, micro = 100, 2
    per_rank = [run_steps(total, 0, micro, gbs, r, world) for r in range(world)]
    order = []
    for step in range(len(per_rank[0])):
        size = gbs(step) if callable(gbs) else gbs
        for r in range(world):
            flat = [i for micro_batch in per_rank[r][step] for i in micro_batch]
            assert len(flat) == size // world
            assert flat == list(range(flat[0], flat[0] + len(flat)))  # contiguous share
            order += flat
    assert order == list(range(len(order)))
    assert total - len(order) < (16 if callable(gbs) else 8)  # only a partial last batch is dropped


@pytest.mark.parametrize("gbs", [8, ramp])
@pytest.mark.parametrize("world", [1, 2])
def test_resume_equals_uninterrupted_run(gbs, world):
    total, micro, k = 120, 2, 3
    for r in range(world):
        full = run_steps(total, 0, micro, gbs, r, world)
        consumed = sum((gbs(s) if callable(gbs) else gbs) for s in range(k))
        resumed = run_steps(total, consumed, micro, gbs, r, world)
        assert resumed == full[k:]
        assert DataParallelSampler(total, consumed, micro, gbs, r, world).start_step == k


def test_len_matches_iteration():
    sampler = DataParallelSampler(101, 16, 2, ramp, 1, 2)
    assert len(sampler) == len(list(sampler))


def test_resume_off_step_boundary_raises():
    with pytest.raises(ValueError, match="not a step boundary"):
        DataParallelSampler(100, 6, 2, ramp, 0, 1)


def test_bad_global_batch_size_raises():
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        list(DataParallelSampler(100, 0, 2, 6, 0, 2))


def test_dataloader_with_collate():
    class Toy:
        def __len__(self):
            return 32

        def __getitem__(self, i):
            return {"input_ids": np.full(5, i, dtype=np.int64), "eos_mask": np.zeros(5, dtype=bool)}

    loader = DataLoader(Toy(), batch_sampler=DataParallelSampler(32, 8, 4, 8, 1, 2), collate_fn=collate)
    batches = list(loader)
    assert len(batches) == 3
    assert batches[0]["input_ids"].shape == (4, 5) and batches[0]["input_ids"].dtype == torch.int64
    assert batches[0]["eos_mask"].dtype == torch.bool
    assert batches[0]["input_ids"][:, 0].tolist() == [12, 13, 14, 15]


def test_collate_rejects_mismatched_samples():
    a = {"input_ids": np.zeros(4, np.int64)}
    with pytest.raises(ValueError, match="keys"):
        collate([a, {"labels": np.zeros(4, np.int64)}])
    with pytest.raises(ValueError, match="shapes"):
        collate([a, {"input_ids": np.zeros(5, np.int64)}])
