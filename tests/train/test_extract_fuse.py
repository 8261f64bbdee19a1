"""Tests of `train extract` (shapes, CSV columns, alignment drops) and `train fuse` (train-only scaler, determinism)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import joblib
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.train.conftest import fit_settings
from xaiclip_cli.cli.main import app
from xaiclip_cli.train.fuse import fuse, patient_matrix
from xaiclip_cli.train.trainer import run_fit


@pytest.fixture(scope="module")
def features(splits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One-epoch run on A, features of A and P extracted with it, then aligned through the CLI."""
    base = tmp_path_factory.mktemp("feat")
    run_fit(fit_settings(splits, base / "runs"))
    runner = CliRunner()
    for mod in ("A", "P"):
        args = ["train", "extract", "--run", str(base / "runs" / "run"), "--modality", mod, "--split-dir",
                str(splits), "--output-dir", str(base / "features"), "--device", "cpu", "--batch-size", "4"]
        if mod == "P":
            args.append("--align")
        res = runner.invoke(app, [*args, "--json"])
        assert res.exit_code == 0, res.output
    return base / "features"


def _rows(p: Path) -> list[dict]:
    with p.open() as fh:
        return list(csv.DictReader(fh))


def test_extract_shapes_and_columns(features: Path, splits: Path) -> None:
    info = _rows(features / "train" / "features_A.csv")
    assert list(info[0].keys()) == ["patient_id", "feature_path", "label", "num_slices"]
    assert len(info) == 10
    for r in info:
        arr = np.load(features / r["feature_path"])
        assert arr.dtype == np.float32 and arr.shape == (3, 96)  # 3 slices x test_resnet's 96 features
        assert r["feature_path"] == f"train/A/grade{r['label']}/{r['patient_id']}.npy"
    assert len(_rows(features / "test" / "features_P.csv")) == 6


def test_extract_matches_model_forward(features: Path, splits: Path) -> None:
    import torch

    from xaiclip_cli.train.data import FileSplit, prepare_batch
    from xaiclip_cli.train.model import model_from_checkpoint

    model, meta = model_from_checkpoint(features.parent / "runs" / "run" / "checkpoints" / "best.pt")
    from xaiclip_cli.train.split import read_split_csv

    rows = [r for r in read_split_csv(splits / "val_A.csv")]
    pid = rows[0]["patient_id"]
    idx = [i for i, r in enumerate(rows) if r["patient_id"] == pid]
    ds = FileSplit(rows, 32, 1)
    with torch.no_grad():
        x = prepare_batch(ds.load(idx), 32, 1, meta["mean"], meta["std"])
        want = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    got = np.load(features / "val" / "A" / f"grade{rows[0]['label']}" / f"{pid}.npy")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_align_columns_and_drops(features: Path, tmp_path: Path) -> None:
    from xaiclip_cli.train.extract import align_modalities
    from xaiclip_cli.train.split import write_csv

    aligned = _rows(features / "train" / "aligned" / "aligned.csv")
    assert list(aligned[0].keys()) == ["patient_id", "label", "feature_path_A", "feature_path_P", "num_slices_A",
                                       "num_slices_P"]
    # Remove one patient from P and flip another's label: both are dropped with reasons.
    import shutil

    work = tmp_path / "f"
    shutil.copytree(features, work)
    p_rows = _rows(work / "train" / "features_P.csv")
    gone, flipped = p_rows[0]["patient_id"], p_rows[1]["patient_id"]
    p_rows[1]["label"] = str(1 - int(p_rows[1]["label"]))
    write_csv(work / "train" / "features_P.csv", p_rows[1:], list(p_rows[0].keys()))
    out = align_modalities(work, ["A", "P"])
    assert out["train"] == {"aligned": 8, "dropped": 2}
    dropped = {r["patient_id"]: r["reason"] for r in _rows(work / "train" / "aligned" / "dropped.csv")}
    assert "missing modality P" in dropped[gone] and "labels disagree" in dropped[flipped]


def test_fuse_scaler_fit_on_train_only_and_deterministic(features: Path, tmp_path: Path) -> None:
    a = fuse(features, ["A", "P"], tmp_path / "a", c_grid=[0.1, 1.0])
    b = fuse(features, ["A", "P"], tmp_path / "b", c_grid=[0.1, 1.0])
    assert a["C"] == b["C"] and a["metrics"] == b["metrics"]
    assert (tmp_path / "a" / "predictions.csv").read_text() == (tmp_path / "b" / "predictions.csv").read_text()
    assert a["feature_dim"] == 192 and a["C"] in (0.1, 1.0)
    x_tr, _, _ = patient_matrix(features, "train", ["A", "P"])
    x_all = np.concatenate([patient_matrix(features, s, ["A", "P"])[0] for s in ("train", "val", "test")])
    scaler = joblib.load(tmp_path / "a" / "model.joblib")["pipeline"][0]
    np.testing.assert_allclose(scaler.mean_, x_tr.mean(0))
    assert not np.allclose(scaler.mean_, x_all.mean(0))
    # x_tr is the mean over each patient's slices, concatenated A then P.
    first = _rows(features / "train" / "aligned" / "aligned.csv")[0]
    want = np.concatenate([np.load(features / first[f"feature_path_{m}"]).mean(0) for m in ("A", "P")])
    np.testing.assert_allclose(x_tr[0], want, rtol=1e-6)
    metrics = _rows(tmp_path / "a" / "fusion_metrics.csv")
    assert [r["split"] for r in metrics] == ["train", "val", "test"]
    assert {"auc", "acc", "sensitivity", "specificity"} <= metrics[0].keys()


def test_fuse_cli_writes_config_and_refuses_overwrite(features: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["train", "fuse", "--feature-dir", str(features), "--output-dir", str(tmp_path / "o"), "--C", "0.5",
            "--no-standardize", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["C"] == 0.5 and (tmp_path / "o" / "config.yaml").is_file()
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.stderr


def test_extract_errors(features: Path, tmp_path: Path, splits: Path) -> None:
    runner = CliRunner()
    run = features.parent / "runs" / "run"
    conflict = runner.invoke(app, ["train", "extract", "--run", str(run), "--modality", "A", "--model", "resnet50",
                                   "--split-dir", str(splits), "--output-dir", str(tmp_path / "x")])
    assert conflict.exit_code == 2 and "conflicts" in conflict.stderr
    none = runner.invoke(app, ["train", "extract", "--modality", "A", "--output-dir", str(tmp_path / "y")])
    assert none.exit_code == 2 and "--run" in none.stderr
