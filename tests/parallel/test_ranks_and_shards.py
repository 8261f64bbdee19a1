"""Rank/world from torchrun and SLURM variables; shard dealing parts[r::W]."""

from __future__ import annotations

import pytest

from xaiclip_cli.errors import UsageError
from xaiclip_cli.parallel.ranks import RankInfo, rank_from_env
from xaiclip_cli.parallel.shards import assign, fixed_ranges


def test_rank_from_env() -> None:
    assert rank_from_env({}) == RankInfo(0, 1, 0, "none")
    assert rank_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == RankInfo(3, 4, 1, "torchrun")
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}
    assert rank_from_env(slurm) == RankInfo(5, 8, 1, "slurm")
    assert rank_from_env({**slurm, "RANK": "0", "WORLD_SIZE": "2"}).launcher == "torchrun"  # torchrun wins
    with pytest.raises(UsageError, match="outside"):
        rank_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(UsageError, match="not an integer"):
        rank_from_env({"RANK": "x", "WORLD_SIZE": "2"})


@pytest.mark.parametrize("n, world", [(0, 1), (7, 2), (7, 3), (3, 5)])
def test_assign_is_a_disjoint_cover(n: int, world: int) -> None:
    units = list(range(n))
    got = [assign(units, r, world) for r in range(world)]
    assert sorted(u for g in got for u in g) == units
    assert got[0] == units[0::world]


def test_fixed_ranges() -> None:
    assert fixed_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert fixed_ranges(0, 4) == []
    with pytest.raises(ValueError):
        assign([1], 1, 1)
