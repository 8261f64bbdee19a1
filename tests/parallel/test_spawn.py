"""One spawned worker per GPU: rank/world, GPU pinned through CUDA_VISIBLE_DEVICES, progress counts, errors."""

from __future__ import annotations

import pytest

from xaiclip_cli.parallel.spawn import spawn_workers


@pytest.mark.slow
def test_spawn_two_workers_pins_gpus_and_counts_progress() -> None:
    seen = []
    out = spawn_workers("tests.parallel.spawn_targets:report", {"n": 3, "fail_rank": 1}, [4, 7], device="cuda",
                        advance=seen.append)
    assert sum(seen) == 6
    assert out[0].exit_code == 0 and out[0].result is not None
    assert (out[0].result["rank"], out[0].result["world"], out[0].result["cvd"]) == (0, 2, "4")
    assert out[0].result["device"] == "cuda"
    assert out[1].exit_code == 2 and out[1].error == "bad thing" and out[1].gpu == 7
