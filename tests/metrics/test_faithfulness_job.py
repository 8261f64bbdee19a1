"""The faithfulness job's files: per-worker logs (header, cut lines, guard), the collector lock, group sizes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from xaiclip_cli.errors import UsageError
from xaiclip_cli.metrics import faithfulness_job as FJ

GUARD = {"steps": 4, "convention": "xaiclip"}


def _rec(key: str, auc: float) -> str:
    return json.dumps({"row": {"image": key, "status": "ok", "deletion_auc": auc}, "x": [0.0, 1.0]}) + "\n"


def test_group_size_fills_about_four_batches() -> None:
    # 2·(s+1) perturbed inputs per map; ⌊4·batch / (2·(s+1))⌋ maps per group, at least one
    assert FJ.group_size(SimpleNamespace(batch_size=64, steps=50)) == 2  # 256 // 102
    assert FJ.group_size(SimpleNamespace(batch_size=10, steps=4)) == 4  # 40 // 10
    assert FJ.group_size(SimpleNamespace(batch_size=4, steps=50)) == 1  # 16 // 102 = 0 -> 1


def test_open_log_writes_header_and_closes_a_cut_line(tmp_path: Path) -> None:
    p = FJ.log_path(tmp_path, 1)
    fd = FJ.open_log(p, {"settings": GUARD, "model": {"backend": "toy"}}, truncate=False)
    FJ._write_all(fd, _rec("a", 0.25).encode())
    FJ._write_all(fd, _rec("b", 0.5).encode()[:20])  # a kill in the middle of a record
    os.close(fd)
    fd = FJ.open_log(p, {"settings": GUARD}, truncate=False)  # the resumed worker: header kept, line closed
    FJ._write_all(fd, _rec("b", 0.75).encode())
    os.close(fd)
    lines = p.read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["model"] == {"backend": "toy"}
    records, model = FJ.read_logs(tmp_path, GUARD)
    assert {k: r["row"]["deletion_auc"] for k, r in records.items()} == {"a": 0.25, "b": 0.75}
    assert model == {"backend": "toy"}
    fd = FJ.open_log(p, {"settings": GUARD}, truncate=True)  # --overwrite: a fresh log
    os.close(fd)
    assert p.read_text().splitlines() == [json.dumps({"settings": GUARD})]


def test_logs_in_order_legacy_first_and_guard(tmp_path: Path) -> None:
    (tmp_path / "progress.jsonl").write_text(json.dumps({"settings": GUARD}) + "\n" + _rec("old", 0.1))
    (tmp_path / "progress.10.jsonl").write_text(json.dumps({"settings": GUARD}) + "\n" + _rec("x", 0.3))
    (tmp_path / "progress.2.jsonl").write_text(json.dumps({"settings": GUARD}) + "\n" + _rec("x", 0.2))
    (tmp_path / "progress.tmp.jsonl").write_text("not a log")
    assert [p.name for p in FJ.log_files(tmp_path)] == ["progress.jsonl", "progress.2.jsonl", "progress.10.jsonl"]
    records, _ = FJ.read_logs(tmp_path, GUARD)
    assert records["old"]["row"]["deletion_auc"] == 0.1 and records["x"]["row"]["deletion_auc"] == 0.3
    FJ.check_logs(tmp_path, GUARD)
    other = {"steps": 6, "convention": "xaiclip"}
    (tmp_path / "progress.3.jsonl").write_text(json.dumps({"settings": other}) + "\n" + _rec("y", 0.9))
    assert "y" not in FJ.read_logs(tmp_path, GUARD)[0]  # another run's log is never mixed in
    with pytest.raises(UsageError, match=r"progress\.3\.jsonl was written with different settings \(steps: 6 -> 4\)"):
        FJ.check_logs(tmp_path, GUARD)


def test_collector_lock_has_one_winner(tmp_path: Path) -> None:
    assert FJ._lock(tmp_path) is True
    assert FJ._lock(tmp_path) is False
    assert json.loads((tmp_path / FJ.LOCK).read_text())["pid"] > 0


def test_finished_result_refused_partial_result_resumed(tmp_path: Path) -> None:
    FJ._check_output(tmp_path, overwrite=False)  # no result yet
    (tmp_path / "eval.json").write_text(json.dumps({"counts": {"images": 3, "failed": 1}}))
    FJ._check_output(tmp_path, overwrite=False)  # maps failed: a rerun retries them
    (tmp_path / "eval.json").write_text(json.dumps({"counts": {"images": 3}}))
    with pytest.raises(UsageError, match="--overwrite"):
        FJ._check_output(tmp_path, overwrite=False)
    FJ._check_output(tmp_path, overwrite=True)


def test_a_group_cut_by_a_kill_is_dropped_whole(tmp_path: Path) -> None:
    def tagged(key: str, wid: str, of: int) -> str:
        rec = json.loads(_rec(key, 0.5))
        return json.dumps({**rec, "wid": wid, "of": of}) + "\n"

    whole = tagged("a", "w1", 2) + tagged("b", "w1", 2)
    cut = tagged("c", "w2", 3) + tagged("d", "w2", 3) + tagged("e", "w2", 3)[:30]
    redone = tagged("c", "w3", 3) + tagged("d", "w3", 3)  # not yet complete either
    head = json.dumps({"settings": GUARD}) + "\n"
    (tmp_path / "progress.0.jsonl").write_text(head + whole + cut + "\n" + _rec("old", 0.1) + redone)
    records, _ = FJ.read_logs(tmp_path, GUARD)
    assert sorted(records) == ["a", "b", "old"]  # c, d, e are redone together, in the same batches
    with open(tmp_path / "progress.0.jsonl", "a") as fh:
        fh.write(tagged("e", "w3", 3))
    assert sorted(FJ.read_logs(tmp_path, GUARD)[0]) == ["a", "b", "c", "d", "e", "old"]
