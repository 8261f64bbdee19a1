"""Tests of the synthetic patient tree (`train toy-tree`): layout, determinism, learnable grades, overwrite rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xaiclip_cli.cli.main import app
from xaiclip_cli.errors import UsageError
from xaiclip_cli.train.toy_tree import GRADE_CELLS, hospital_counts, make_toy_patient_tree, plan_patients, to_grey
from xaiclip_cli.train.tree import scan_tree

runner = CliRunner()


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_counts_and_dropped_patients(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    m = make_toy_patient_tree(root, n_patients=20, seed=0)
    assert hospital_counts(20) == {"JM": 14, "EXT1": 3, "EXT2": 3} and len(m["patients"]) == 20
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["EXT1", "EXT2", "JM"]
    assert sorted(p.name for p in (root / "JM").iterdir()) == ["fold1", "fold2"]
    pngs = sorted(root.rglob("*.png"))
    assert len(pngs) == m["slices"]
    with Image.open(pngs[0]) as im:
        assert (im.mode, im.size) == ("L", (64, 64))
    kept, dropped = scan_tree(root, ["A", "P"])
    # Exactly the patients planned without a modality are dropped; JM001's folds (A in fold1, P in fold2) merge.
    assert sorted(d["patient_id"] for d in dropped) == sorted(m["incomplete_patients"]) == ["EXT1003", "JM007",
                                                                                             "JM014"]
    assert (root / "JM/fold1/grade0/JM001/A").is_dir() and (root / "JM/fold2/grade0/JM001/P").is_dir()
    planned = {p["patient_id"]: p["slices"] for p in m["patients"]}
    for pid, p in kept.items():
        assert {k: len(v) for k, v in p.slices.items()} == planned[pid]
        assert p.label == int(p.slices["A"][0].parent.parent.parent.name[-1])
    assert json.loads((root / "toy_tree.json").read_text())["seed"] == 0


def test_same_seed_same_files_other_seed_differs(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_toy_patient_tree(tmp_path / name, 16, seed=seed)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a == b
    assert a != c
    assert plan_patients(16, 3) == plan_patients(16, 3)


def test_slices_are_grey_toy_cells_of_the_grade(tmp_path: Path) -> None:
    from xaiclip_cli.data.toycells import TOYCELLS_CLASSES, ToyCellsSource

    root = tmp_path / "tree"
    make_toy_patient_tree(root, 16, seed=0)
    src = ToyCellsSource()
    imgs = np.concatenate([src.images(s) for s in ("train", "val", "test")])
    labs = np.concatenate([src.labels(s).reshape(-1) for s in ("train", "val", "test")])
    for grade, cell in GRADE_CELLS.items():
        for mod in ("A", "P"):
            ref = to_grey(imgs[labs == TOYCELLS_CLASSES.index(cell)], mod).reshape(-1, 64 * 64)
            other = to_grey(imgs[labs != TOYCELLS_CLASSES.index(cell)], mod).reshape(-1, 64 * 64)
            f = next(root.glob(f"JM/fold*/grade{grade}/*/{mod}/slice1.png"))
            s = np.asarray(Image.open(f)).reshape(1, -1)
            assert (ref == s).all(1).any(), f  # the slice is a cell of the grade's class ...
            assert not (other == s).all(1).any()  # ... and of no other class


def test_to_grey_hand_values() -> None:
    px = np.array([[[100, 200, 50]]], np.uint8)
    assert to_grey(px, "A")[0, 0] == round(100 * 0.299 + 200 * 0.587 + 50 * 0.114)
    assert to_grey(px, "P")[0, 0] == 55


def test_overwrite_rules(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    args = ["train", "toy-tree", "--output-dir", str(root), "--patients", "16", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["patients"] == 16 and [h["hospital"] for h in out["hospitals"]] == ["JM", "EXT1", "EXT2"]
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    assert runner.invoke(app, [*args, "--overwrite", "--seed", "1"]).exit_code == 0
    assert json.loads((root / "toy_tree.json").read_text())["seed"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    res = runner.invoke(app, ["train", "toy-tree", "--output-dir", str(other), "--overwrite"])
    assert res.exit_code == 2 and "not a toy tree" in res.stderr and (other / "keep.txt").is_file()
    with pytest.raises(UsageError):
        make_toy_patient_tree(tmp_path / "small", n_patients=10)
    assert runner.invoke(app, ["train", "toy-tree", "--output-dir", str(tmp_path / "s"), "--patients", "4"]
                         ).exit_code == 2
