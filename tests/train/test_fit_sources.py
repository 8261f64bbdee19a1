"""`train fit` on the other data kinds: an image folder, a CSV manifest and a MedMNIST-format npz (1 epoch, tiny)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xaiclip_cli.cli.main import app
from xaiclip_cli.train.data import load_fit_data

runner = CliRunner()
SIZES = {"train": 12, "val": 6, "test": 6}


def _image(rng: np.random.Generator, label: int, side: int) -> np.ndarray:
    img = rng.integers(0, 60, (side, side, 3)).astype(np.uint8)
    if label == 1:
        img[side // 4:3 * side // 4, side // 4:3 * side // 4] = 220
    return img


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/{train,val,test}/{cat,dog}/*.png with two image sizes (the loader resizes per file)."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, n in SIZES.items():
        for i in range(n):
            label = i % 2
            d = root / split / ("cat", "dog")[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_image(rng, label, 24 if i % 3 else 40)).save(d / f"img{i}.png")
    return root


def _fit(tmp_path: Path, data: list[str], name: str) -> dict:
    args = ["train", "fit", *data, "--model", "test_resnet", "--pretrained", "false", "--image-size", "32",
            "--epochs", "1", "--batch-size", "6", "--device", "cpu", "--num-workers", "0", "--threads", "1",
            "--output-dir", str(tmp_path / "runs"), "--name", name, "--best-hparams-dir", "", "--report-to", "none",
            "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    results = json.loads((Path(out["run_dir"]) / "results.json").read_text())
    for v in (results["best_val_metrics"]["auc"], results["test_metrics"]["auc"]):
        assert math.isnan(v) or 0.0 <= v <= 1.0
    return results


def test_fit_on_image_folder(folder: Path, tmp_path: Path) -> None:
    results = _fit(tmp_path, ["--data", f"folder:{folder}"], "folder")
    assert results["counts"] == SIZES and results["class_names"] == ["cat", "dog"]
    assert results["data"] == {"kind": "folder", "ref": f"folder:{folder}"}
    assert 0.0 <= results["test_metrics"]["auc"] <= 1.0  # both classes in test: defined


def test_fit_on_csv_manifest(folder: Path, tmp_path: Path) -> None:
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        for p in sorted(folder.rglob("*.png")):
            rel = p.relative_to(folder)
            w.writerow([rel.as_posix(), rel.parts[1], rel.parts[0]])
    results = _fit(tmp_path, ["--data", f"csv:{manifest}"], "csv")
    assert results["counts"] == SIZES and results["class_names"] == ["cat", "dog"]


def test_file_sources_load_resized_grey(folder: Path) -> None:
    data = load_fit_data(f"folder:{folder}", Path("unused"), None, 32, 1)
    images, labels, _ = data.splits["train"][[0, 1, 2]]
    assert images.shape == (3, 1, 32, 32) and str(images.dtype) == "torch.uint8"
    assert labels.tolist() == [int(p.split("/")[-2] == "dog") for p in data.splits["train"].paths[:3]]


def test_fit_on_medmnist_npz(tmp_path: Path) -> None:
    """A synthetic bloodmnist.npz (16/4/8 images, 28 px RGB, 8 classes) in a temporary --data-root."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 16), ("val", 4), ("test", 8)):
        labels = (np.arange(n) % 8).astype(np.uint8).reshape(n, 1)
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28, 3)).astype(np.uint8)
        arrays[f"{split}_labels"] = labels
    root = tmp_path / "medmnist"
    root.mkdir()
    np.savez_compressed(root / "bloodmnist.npz", **arrays)
    results = _fit(tmp_path, ["--data", "medmnist:bloodmnist", "--data-root", str(root)], "blood")
    assert results["counts"] == {"train": 16, "val": 4, "test": 8} and results["num_classes"] == 8
    assert results["class_names"][0].startswith("basophil") and len(results["class_names"]) == 8
    assert results["data"]["flag"] == "bloodmnist" and results["data"]["task"] == "multi-class"
    # A wrong size is refused with a one-line usage error naming the file.
    res = runner.invoke(app, ["train", "fit", "--data", "medmnist:bloodmnist", "--data-root", str(root), "--size",
                              "64", "--device", "cpu", "--output-dir", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "bloodmnist_64.npz" in res.stderr
