"""Next-fit packing: consecutive items into groups under a size budget.

Used, for example, for whole records per training sequence and for prompts per packed
prefill call. Order is kept; an item
larger than the budget gets a group of its own.
"""

from __future__ import annotations

from collections.abc import Sequence


def next_fit(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Indices of ``sizes`` in consecutive groups whose sizes sum to at most ``budget``."""
    groups: list[list[int]] = []
    total = budget
    for index, size in enumerate(sizes):
        if total + size > budget:
            groups.append([])
            total = 0
        groups[-1].append(index)
        total += int(size)
    return groups
