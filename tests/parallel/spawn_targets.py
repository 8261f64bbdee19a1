"""Worker targets for the spawn tests (importable in a fresh spawned process)."""

from __future__ import annotations

import os
from typing import Any


def report(payload: dict[str, Any], rank: int, world: int, device: str, advance: Any) -> dict[str, Any]:
    """Return what the worker saw; report ``payload['n']`` progress units."""
    for _ in range(payload["n"]):
        advance(1)
    if payload.get("fail_rank") == rank:
        from xaiclip_cli.errors import UsageError

        raise UsageError("bad thing\nsecond line")
    return {"rank": rank, "world": world, "device": device, "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "torch_loaded_before": payload.get("x")}
