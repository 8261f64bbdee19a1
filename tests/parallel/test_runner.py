"""The job runner: block and strided shards, resume planning, failure collection, exit rule, shard reports."""

from __future__ import annotations

import json

import pytest

from xaiclip_cli.parallel.runner import JobSpec, block_range, exit_code, merge_stats, run_job, worker_indices


def test_block_ranges_cover_and_match_formula() -> None:
    # N=10, W=3: ceil(10/3)=4 -> [0,4) [4,8) [8,10)
    assert [block_range(10, w, 3) for w in range(3)] == [(0, 4), (4, 8), (8, 10)]
    # more workers than entries: trailing workers get empty ranges, never out of range
    assert [block_range(2, w, 4) for w in range(4)] == [(0, 1), (1, 2), (2, 2), (2, 2)]
    assert worker_indices(10, [1, 5, 6, 9], 1, 3, "blocks") == [5, 6]
    assert worker_indices(10, [1, 5, 6, 9], 1, 3, "strided") == [5]
    with pytest.raises(ValueError):
        block_range(3, 3, 3)


def test_exit_rule_and_merge() -> None:
    assert exit_code(3, 0) == 0
    assert exit_code(2, 1) == 3
    assert exit_code(0, 1) == 1
    assert exit_code(0, 1, skipped=4) == 3  # earlier results exist: partial
    m = merge_stats([{"done": 2, "rows": [1], "layer": None, "x": True}, {"done": 3, "rows": [2], "layer": "L"}])
    assert m == {"done": 5, "rows": [1, 2], "layer": "L", "x": True}


def test_run_job_plans_resume_collects_failures_and_writes_reports(tmp_path) -> None:
    done_marks = {0, 3}
    seen: list[list[int]] = []

    def local(indices, device, advance):
        seen.append(list(indices))
        fails = [{"index": i, "error": f"item {i} broken"} for i in indices if i == 4]
        for _ in indices:
            advance(1)
        return {"done": len(indices) - len(fails), "failures": fails}

    ticks = []
    spec = JobSpec("t", 6, lambda i: i in done_marks, local, sharding="blocks", output_dir=tmp_path,
                   shard_reports=True, failed_log=True, describe=lambda i: {"path": f"p{i}"})
    rep = run_job(spec, advance=ticks.append, env={})
    assert seen == [[1, 2, 4, 5]] and sum(ticks) == 4
    assert (rep.planned, rep.skipped, rep.done, rep.failed, rep.exit_code) == (6, 2, 3, 1, 3)
    assert rep.failures == [{"path": "p4", "index": 4, "error": "item 4 broken"}]
    line = json.loads((tmp_path / "failed.jsonl").read_text().splitlines()[0])
    assert line["index"] == 4 and line["path"] == "p4"
    shard = json.loads((tmp_path / "shards" / "worker-0-of-1.json").read_text())
    assert shard["entries"] == [0, 6] and shard["todo"] == 4 and shard["done"] == 3 and shard["failed"] == 1


def test_env_rank_takes_its_block(tmp_path) -> None:
    seen = []

    def local(indices, device, advance):
        seen.append(list(indices))
        return {"done": len(indices)}

    spec = JobSpec("t", 7, lambda i: False, local, sharding="blocks")
    rep = run_job(spec, env={"RANK": "1", "WORLD_SIZE": "3"})
    assert seen == [[3, 4, 5]] and rep.workers == 3 and rep.todo == [3, 4, 5]


def test_aligned_blocks_keep_groups_on_one_worker() -> None:
    # N=6, W=2, groups of 4: ceil(6/2)=3 rounded up to 4 -> [0,4) [4,6)
    assert [block_range(6, w, 2, align=4) for w in range(2)] == [(0, 4), (4, 6)]
    # N=7, W=3, groups of 2: ceil(7/3)=3 -> 4 -> [0,4) [4,7) [7,7)
    assert [block_range(7, w, 3, align=2) for w in range(3)] == [(0, 4), (4, 7), (7, 7)]
    assert [block_range(10, w, 3, align=1) for w in range(3)] == [block_range(10, w, 3) for w in range(3)]
    seen = []

    def local(indices, device, advance):
        seen.append(list(indices))
        return {"done": len(indices)}

    spec = JobSpec("t", 7, lambda i: i == 5, local, sharding="blocks", align=2)
    rep = run_job(spec, env={"RANK": "1", "WORLD_SIZE": "3"})
    assert seen == [[4, 6]] and rep.todo == [4, 6]  # block [4,7) minus the done entry 5
    with pytest.raises(ValueError):
        block_range(4, 0, 2, align=0)
