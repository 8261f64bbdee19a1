"""Rank, world size and local rank of this process, from torchrun or SLURM environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from xaiclip_cli.errors import UsageError


@dataclass(frozen=True)
class RankInfo:
    """Which of ``world`` processes this is; ``launcher`` names where the numbers came from."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    launcher: str = "none"

    @property
    def distributed(self) -> bool:
        """True when several processes share the work."""
        return self.world > 1


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError as exc:
        raise UsageError(f"environment variable {name}={env[name]!r} is not an integer") from exc


def rank_from_env(env: Mapping[str, str] | None = None) -> RankInfo:
    """torchrun (RANK, WORLD_SIZE, LOCAL_RANK) first, then SLURM (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID)."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:
        info = RankInfo(_int(env, "RANK"), _int(env, "WORLD_SIZE"),
                        _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0, "torchrun")
    elif "SLURM_NTASKS" in env and "SLURM_PROCID" in env:
        info = RankInfo(_int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"),
                        _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0, "slurm")
    else:
        return RankInfo()
    if info.world < 1 or not 0 <= info.rank < info.world:
        raise UsageError(f"{info.launcher} rank {info.rank} is outside world size {info.world}")
    return info
