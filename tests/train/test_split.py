"""Tests of the patient-level split: leakage, all-modalities rule, determinism, external test, bad trees."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.train.conftest import make_tree
from xaiclip_cli.cli.main import app
from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.train.split import check_leakage, make_split, read_split_csv


def _all_rows(d: Path) -> list[dict]:
    return [r for f in sorted(d.glob("*_*.csv")) if f.name != "dropped_patients.csv" for r in read_split_csv(f)]


def test_no_leakage_and_same_split_for_every_modality(splits: Path) -> None:
    rows = _all_rows(splits)
    by_patient: dict[str, set[str]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    for split in ("train", "val", "test"):
        a = {r["patient_id"] for r in read_split_csv(splits / f"{split}_A.csv")}
        p = {r["patient_id"] for r in read_split_csv(splits / f"{split}_P.csv")}
        assert a == p and a
    check_leakage(rows, "JM")  # the runtime check agrees


def test_test_split_is_exactly_the_external_hospital(splits: Path) -> None:
    rows = _all_rows(splits)
    assert {r["hospital"] for r in rows if r["split"] == "test"} == {"EX"}
    assert {r["split"] for r in rows if r["hospital"] == "JM"} == {"train", "val"}
    # 15 JM patients kept (one dropped), 70 % stratified to train: 10 train / 5 val; 6 external.
    summary = json.loads((splits / "split_summary.json").read_text())
    assert [summary["splits"][s]["patients"] for s in ("train", "val", "test")] == [10, 5, 6]
    assert summary["splits"]["test"]["slices"] == 6 * 3 * 2
    labels = [r["label"] for r in read_split_csv(splits / "val_A.csv")]
    assert set(labels) == {0, 1}  # stratified


def test_all_modalities_rule_drops_patient_without_p(splits: Path) -> None:
    rows = _all_rows(splits)
    assert "JM_g0_p7" not in {r["patient_id"] for r in rows}
    assert all(r["modality"] in ("A", "P") for r in rows)  # T1 ignored
    dropped = json.loads((splits / "split_summary.json").read_text())["dropped"]
    assert [d["patient_id"] for d in dropped] == ["JM_g0_p7"] and "P" in dropped[0]["reason"]


def test_folds_merged_and_slices_in_natural_order(tree: Path, splits: Path) -> None:
    rows = [r for r in read_split_csv(splits / "train_A.csv")]
    first = [Path(r["image_path"]).name for r in rows if r["patient_id"] == rows[0]["patient_id"]]
    assert first == ["slice1.png", "slice2.png", "slice3.png"]
    assert list(rows[0].keys())[:2] == ["image_path", "label"]


def test_same_seed_same_split_and_other_seed_differs(tree: Path, splits: Path, tmp_path: Path) -> None:
    make_split(tree, ["A", "P"], "JM", 0.7, 42, tmp_path / "again")
    for f in ("train_A.csv", "val_P.csv", "test_A.csv"):
        assert (tmp_path / "again" / f).read_text() == (splits / f).read_text()
    val_ids = set()
    for seed in range(5):
        make_split(tree, ["A", "P"], "JM", 0.7, seed, tmp_path / f"s{seed}")
        val_ids.add(frozenset(r["patient_id"] for r in read_split_csv(tmp_path / f"s{seed}" / "val_A.csv")))
    assert len(val_ids) > 1


def test_leakage_check_raises_on_crafted_leak() -> None:
    rows = [{"patient_id": "p1", "split": "train", "hospital": "JM"}, {"patient_id": "p1", "split": "val",
                                                                       "hospital": "JM"}]
    with pytest.raises(XaiclipError, match="p1"):
        check_leakage(rows, "JM")
    with pytest.raises(XaiclipError, match="test"):
        check_leakage([{"patient_id": "p2", "split": "train", "hospital": "EX"}], "JM")


def test_class_with_one_patient_is_a_clear_error(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "d", n_internal=2, n_external=1, drop_p_for=("JM_g1_p0",))
    with pytest.raises(UsageError, match="grade.*1 has 1"):
        make_split(root, ["A", "P"], "JM", 0.7, 42, tmp_path / "out")


def test_patient_under_two_grades_is_an_error(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "d", n_internal=2, n_external=1, drop_p_for=())
    shutil.copytree(root / "JM" / "fold1" / "grade0" / "JM_g0_p0", root / "JM" / "fold2" / "grade1" / "JM_g0_p0")
    with pytest.raises(UsageError, match="JM_g0_p0"):
        make_split(root, ["A", "P"], "JM", 0.7, 42, tmp_path / "out")


def test_cli_split_exit_codes(tree: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "s"
    ok = runner.invoke(app, ["train", "split", "--root-dir", str(tree), "--output-dir", str(out), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["dropped_patients"] == 1
    again = runner.invoke(app, ["train", "split", "--root-dir", str(tree), "--output-dir", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    missing = runner.invoke(app, ["train", "split", "--output-dir", str(out)])
    assert missing.exit_code == 2 and "--root-dir" in missing.stderr
    bad = runner.invoke(app, ["train", "split", "--root-dir", str(tmp_path / "nope"), "--output-dir", str(out / "x")])
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1
