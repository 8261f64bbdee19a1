"""Two ranks (WORLD_SIZE=2) write disjoint parts, merge builds the index; checks, reruns, materialize."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.store.fakes import FakeBackend, FakeSource, read_rows
from xaiclip_cli.errors import PartialFailure, UsageError
from xaiclip_cli.store import layout as L
from xaiclip_cli.store.image import ImageOptions, run_image_stage
from xaiclip_cli.store.merge import merge_store
from xaiclip_cli.store.text import PromptLists, run_text_stage

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"train": 5, "val": 2, "test": 3}


def _rank(h5: Path, rank: int, world: int, **kw) -> None:
    run_image_stage(FakeSource(SIZES), FakeBackend(), ImageOptions(h5=h5, part_rows=3, batch_size=2, rank=rank,
                                                                   world=world, manage_index=False, **kw))


def test_two_rank_processes_then_merge_equal_one_process(tmp_path: Path) -> None:
    h5 = tmp_path / "run" / "s.h5"
    procs = []
    for r in range(2):
        env = dict(os.environ, WORLD_SIZE="2", RANK=str(r), LOCAL_RANK=str(r), XAICLIP_FAKE_SIZES=json.dumps(SIZES))
        procs.append(subprocess.Popen(
            [sys.executable, str(ROOT / "tests/store/fake_cli.py"), "store", "image", "--h5", str(h5),
             "--part-rows", "3", "--batch-size", "2", "--json"], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()
    res = [json.loads(o) for o, _ in outs]
    assert sorted((r["rank"], r["world"], r["rows_written"]) for r in res) == [(0, 2, 6), (1, 2, 4)]
    assert not h5.exists()  # ranks never touch the index
    with h5py.File(L.part_path(h5, 1), "r") as p:  # part 1 was rank 1's: parts[1::2]
        assert (int(p.attrs["row_start"]), int(p.attrs["row_stop"])) == (3, 6)
    m = merge_store(h5)
    assert m.complete and m.parts_complete == 4 and m.split_counts == SIZES
    ref = tmp_path / "ref" / "s.h5"
    run_image_stage(FakeSource(SIZES), FakeBackend(), ImageOptions(h5=ref, part_rows=3, batch_size=2))
    a, b = read_rows(ref), read_rows(h5)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert merge_store(h5).complete  # rerunnable


def test_merge_reports_missing_parts_then_finishes(tmp_path: Path) -> None:
    h5 = tmp_path / "s.h5"
    run_text_stage(PromptLists(["a"], ["x {}"], [], [], "p"), FakeBackend(), h5)  # text-only index first
    _rank(h5, 0, 2)
    with pytest.raises(PartialFailure, match="merged 2 of 4 parts") as ei:
        merge_store(h5)
    assert ei.value.exit_code == 3
    rows = read_rows(h5)
    assert rows["written"].tolist() == [True] * 3 + [False] * 3 + [True] * 3 + [False]
    assert np.isnan(rows["image_features"][3:6]).all()
    with h5py.File(h5, "r") as f:
        assert list(f["templates"]) == ["label_prompts_t01"]
    _rank(h5, 1, 2)
    out = tmp_path / "single.h5"
    m = merge_store(h5, materialize_to=out)
    assert m.complete and m.materialized == str(out)
    a, b = read_rows(h5), read_rows(out)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    with h5py.File(out, "r") as f:
        assert not f["image_features"].is_virtual and f.attrs["layout"] == "single" and "templates" in f
    with pytest.raises(UsageError, match="exists"):
        merge_store(h5, materialize_to=out)


def test_merge_refuses_a_part_of_another_model(tmp_path: Path) -> None:
    h5 = tmp_path / "s.h5"
    _rank(h5, 0, 1)
    merge_store(h5)
    with h5py.File(L.part_path(h5, 2), "r+") as p:
        p.attrs["fingerprint"] = "0" * 64
    with pytest.raises(UsageError, match="another model"):
        merge_store(h5)


def test_merge_without_a_store(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no store"):
        merge_store(tmp_path / "none.h5")
