"""End to end on shipped data: toy-tree -> split -> fit A -> fit P -> extract --align -> fuse -> show, as commands.

Checks the files of each step, the split leakage rules on the written CSVs (independently of the code under test),
and that the numbers are sane: AUCs in [0, 1], fusion metrics per split, features (n_slices, dim) per patient.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from xaiclip_cli.cli.main import app

runner = CliRunner()
MODS = ("A", "P")
DIM = 96  # timm test_resnet pooled features


def _run(args: list[str]) -> dict:
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _in_unit(v: object) -> bool:
    return isinstance(v, float) and 0.0 <= v <= 1.0


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train_e2e")


@pytest.fixture(scope="module")
def tree(work: Path) -> dict:
    out = _run(["train", "toy-tree", "--output-dir", str(work / "tree"), "--patients", "24"])
    assert out["patients"] == 24
    return json.loads((work / "tree" / "toy_tree.json").read_text())


@pytest.fixture(scope="module")
def splits(work: Path, tree: dict) -> Path:
    out = _run(["train", "split", "--root-dir", str(work / "tree"), "--output-dir", str(work / "splits")])
    assert out["dropped_patients"] == len(tree["incomplete_patients"]) > 0
    return work / "splits"


@pytest.fixture(scope="module")
def runs(work: Path, splits: Path) -> dict[str, Path]:
    out = {}
    for mod in MODS:
        res = _run(["train", "fit", "--split-dir", str(splits), "--modality", mod, "--model", "test_resnet",
                    "--pretrained", "false", "--image-size", "64", "--epochs", "1", "--batch-size", "16",
                    "--learning-rate", "1e-3", "--device", "cpu", "--num-workers", "0", "--threads", "1",
                    "--output-dir", str(work / "runs"), "--name", f"toy-{mod}", "--best-hparams-dir", "",
                    "--report-to", "none"])
        assert res["best_epoch"] == 1 and res["epochs_run"] == 1 and _in_unit(res["best_val"])
        out[mod] = Path(res["run_dir"])
    return out


@pytest.fixture(scope="module")
def features(work: Path, splits: Path, runs: dict[str, Path]) -> Path:
    feats = work / "features"
    for mod in MODS:
        extra = ["--align"] if mod == MODS[-1] else []
        res = _run(["train", "extract", "--run", str(runs[mod]), "--modality", mod, "--split-dir", str(splits),
                    "--output-dir", str(feats), "--device", "cpu", "--threads", "1", *extra])
        assert (res["arch"], res["feature_dim"]) == ("test_resnet", DIM)
    return feats


def test_split_has_no_leakage_and_drops_incomplete_patients(splits: Path, tree: dict) -> None:
    where: dict[str, set[str]] = defaultdict(set)
    by_mod: dict[str, dict[str, str]] = defaultdict(dict)
    for f in splits.glob("*_*.csv"):
        if f.name == "dropped_patients.csv":
            continue
        split, mod = f.stem.split("_")
        for r in _rows(f):
            assert (r["split"], r["modality"]) == (split, mod)
            where[r["patient_id"]].add(split)
            by_mod[mod][r["patient_id"]] = split
            assert (split == "test") == (r["hospital"] != "JM")
    assert all(len(s) == 1 for s in where.values())  # no patient in two splits
    assert by_mod["A"] == by_mod["P"]  # the same split for every modality
    assert set(where) == {p["patient_id"] for p in tree["patients"]} - set(tree["incomplete_patients"])
    summary = json.loads((splits / "split_summary.json").read_text())["splits"]
    assert summary["test"]["patients"] == sum(1 for s in where.values() if s == {"test"})
    assert {"0", "1"} <= set(summary["val"]["patients_by_label_hospital"])  # both grades in val


def test_fit_runs_write_sane_metrics(runs: dict[str, Path]) -> None:
    for run in runs.values():
        for name in ("config.yaml", "metrics.csv", "results.json", "test_metrics.csv", "checkpoints/best.pt"):
            assert (run / name).is_file(), name
        test_rows = _rows(run / "test_metrics.csv")
        assert [r["hospital"] for r in test_rows] == ["EXT1", "EXT2", "overall"]
        assert all(0.0 <= float(r["auc"]) <= 1.0 for r in test_rows if r["auc"])
        results = json.loads((run / "results.json").read_text())
        assert _in_unit(results["test_metrics"]["auc"]) and _in_unit(results["test_metrics"]["patient_auc"])


def test_features_per_patient_and_alignment(features: Path, splits: Path, tree: dict) -> None:
    planned = {p["patient_id"]: p["slices"] for p in tree["patients"]}
    for split in ("train", "val", "test"):
        for mod in MODS:
            info = _rows(features / split / f"features_{mod}.csv")
            assert info and set(info[0]) == {"patient_id", "feature_path", "label", "num_slices"}
            for r in info:
                arr = np.load(features / r["feature_path"])
                assert arr.dtype == np.float32 and arr.shape == (planned[r["patient_id"]][mod], DIM)
                assert int(r["num_slices"]) == arr.shape[0] and np.isfinite(arr).all()
        aligned = _rows(features / split / "aligned" / "aligned.csv")
        split_ids = {r["patient_id"] for r in _rows(splits / f"{split}_A.csv")}
        assert {r["patient_id"] for r in aligned} == split_ids
        assert set(aligned[0]) >= {"feature_path_A", "feature_path_P", "num_slices_A", "num_slices_P"}


def test_fuse_and_show(work: Path, features: Path, runs: dict[str, Path]) -> None:
    out = _run(["train", "fuse", "--feature-dir", str(features), "--output-dir", str(work / "fusion")])
    assert out["feature_dim"] == 2 * DIM
    assert [m["split"] for m in out["metrics"]] == ["train", "val", "test"]
    for m in out["metrics"]:
        assert _in_unit(m["auc"]) and _in_unit(m["acc"]), m
    for name in ("fusion_metrics.csv", "predictions.csv", "model.joblib", "config.yaml"):
        assert (work / "fusion" / name).is_file(), name
    preds = _rows(work / "fusion" / "predictions.csv")
    assert all(math.isclose(float(p["prob_0"]) + float(p["prob_1"]), 1.0, abs_tol=1e-6) for p in preds)
    shown = _run(["train", "show", str(runs["A"])])
    assert shown["best_epoch"] == 1 and [e["epoch"] for e in shown["epochs"]] == [1]
    assert (runs["A"] / "curves.png").is_file()


def test_pipeline_on_the_toy_tree_keeps_everything_under_output_dir(work: Path, tree: dict) -> None:
    out_dir = work / "pipe"
    args = ["train", "pipeline", "--root-dir", str(work / "tree"), "--output-dir", str(out_dir), "--model",
            "test_resnet", "--pretrained", "false", "--image-size", "64", "--epochs", "1", "--batch-size", "16",
            "--device", "cpu", "--num-workers", "0", "--threads", "1", "--best-hparams-dir", str(out_dir / "hp"),
            "--report-to", "none"]
    out = _run(args)
    assert [s["step"] for s in out["steps"]] == ["split", "fit A", "extract A", "fit P", "extract P", "align", "fuse"]
    assert [m["split"] for m in out["fusion"]] == ["train", "val", "test"]
    assert all(_in_unit(m["auc"]) for m in out["fusion"])
    for name in ("splits/split_summary.json", "pipeline-A/results.json", "pipeline-P/checkpoints/best.pt",
                 "features/test/aligned/aligned.csv", "fusion/fusion_metrics.csv", "hp/test_resnet_A.yaml"):
        assert (out_dir / name).is_file(), name
    again = _run(args)["steps"]
    assert [s["status"].split()[0] for s in again[:5]] == ["skipped"] * 5
