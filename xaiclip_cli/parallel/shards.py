"""Shard planning: fixed work units (parts) dealt to ranks as ``units[rank::world]`` (clip-retrieval style)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def assign(units: Sequence[T], rank: int, world: int) -> list[T]:
    """The units rank ``rank`` of ``world`` takes: every world-th one starting at its rank (disjoint, covering)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world {world}")
    return list(units[rank::world])


def fixed_ranges(n_items: int, unit: int) -> list[tuple[int, int]]:
    """Split ``n_items`` into consecutive [start, stop) units of ``unit`` items (the last may be shorter)."""
    if unit < 1:
        raise ValueError("unit must be >= 1")
    return [(a, min(a + unit, n_items)) for a in range(0, n_items, unit)]
