"""`metrics.commands` as a library: localisation against the toy cells' nuclei or cell masks (--mask-kind)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from xaiclip_cli.config.eval import EvalSettings
from xaiclip_cli.data.toycells import ToyCellsSource
from xaiclip_cli.errors import UsageError
from xaiclip_cli.metrics.commands import run_localization

N_IMAGES = 4


@pytest.fixture(scope="module")
def nuclei_maps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Maps equal to each toy-cells test image's nuclei mask (cam-run layout, sidecars naming the image)."""
    src = ToyCellsSource()
    d = tmp_path_factory.mktemp("maps") / "test"
    d.mkdir()
    for i in range(N_IMAGES):
        m = src.get_mask("test", i, "nuclei").astype(np.float64)
        np.savez(d / f"test_{i:05d}_nuc_x.npz", raw=m, map=m)
        (d / f"test_{i:05d}_nuc_x.json").write_text(json.dumps({
            "image": {"dataset": "toycells", "split": "test", "index": i}, "method": "nuc", "target_name": "x",
            "target_index": 0}))
    return d.parent


def _rows(p: Path) -> dict[str, dict[str, str]]:
    with open(p, newline="") as fh:
        return {r["image"]: r for r in csv.DictReader(fh)}


def _settings(maps: Path, out: Path, **kw: object) -> EvalSettings:
    return EvalSettings(maps=[maps], output_dir=out, bootstrap=0, thresholds="0.5", **kw)


def test_nuclei_map_scores_one_on_nuclei_and_less_on_cells(nuclei_maps: Path, tmp_path: Path) -> None:
    doc = run_localization(_settings(nuclei_maps, tmp_path / "n", mask_kind="nuclei"))
    assert doc["settings"]["mask_kind"] == "nuclei" and doc["counts"]["evaluated"] == N_IMAGES
    rows = _rows(tmp_path / "n" / "per_image.csv")
    for r in rows.values():
        assert float(r["iou@0.5"]) == 1.0 and float(r["dice@0.5"]) == 1.0 and float(r["pointing_hit"]) == 1.0
        assert float(r["energy"]) == pytest.approx(1.0, abs=1e-12)

    doc = run_localization(_settings(nuclei_maps, tmp_path / "c"))  # default: the target-cell mask
    assert doc["settings"]["mask_kind"] == "cell"
    rows = _rows(tmp_path / "c" / "per_image.csv")
    src = ToyCellsSource()
    ious = []
    for i in range(N_IMAGES):
        # Hand oracle: the binary map thresholded at 0.5 is the nuclei mask N itself; G is the cell mask C.
        n, c = src.get_mask("test", i, "nuclei").astype(bool), src.get("test", i).mask.astype(bool)
        iou = (n & c).sum() / (n | c).sum()
        dice = 2 * (n & c).sum() / (n.sum() + c.sum())
        r = rows[f"test/test_{i:05d}_nuc_x"]
        ious.append(iou)
        assert float(r["iou@0.5"]) == pytest.approx(iou, abs=1e-9) and iou < 0.7  # the csv keeps 10 digits
        assert float(r["dice@0.5"]) == pytest.approx(dice, abs=1e-9) and dice < 0.85
        assert float(r["pointing_hit"]) == 1.0  # the peak lies in the nucleus, inside the cell
        assert float(r["mask_area"]) == pytest.approx(c.mean(), abs=1e-9)
    assert doc["metrics"]["iou@0.5"]["mean"] == pytest.approx(np.mean(ious), abs=1e-12)


def test_nuclei_refusals_write_nothing(nuclei_maps: Path, tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    out = tmp_path / "o"
    with pytest.raises(UsageError, match="--mask-kind nuclei reads the dataset's nuclei masks") as e:
        run_localization(_settings(nuclei_maps, out, mask_kind="nuclei", masks=masks))
    assert e.value.exit_code == 2 and "\n" not in str(e.value)
    assert not out.exists()


def test_nuclei_refused_for_a_dataset_without_them(tmp_path: Path) -> None:
    from tests.data.conftest import make_npz

    make_npz(tmp_path / "bloodmnist.npz")
    maps = tmp_path / "maps"
    maps.mkdir()
    np.save(maps / "test_00000.npy", np.ones((8, 8)))  # paired with the dataset row by its stem
    out = tmp_path / "o"
    s = _settings(maps, out, mask_kind="nuclei", dataset=f"medmnist:{tmp_path / 'bloodmnist.npz'}")
    with pytest.raises(UsageError, match="dataset medmnist:.* has no nuclei masks \\(has: none") as e:
        run_localization(s)
    assert e.value.exit_code == 2 and not out.exists()
    # the cell kind on the same dataset runs and counts the missing masks
    doc = run_localization(_settings(maps, out, dataset=f"medmnist:{tmp_path / 'bloodmnist.npz'}"))
    assert doc["counts"]["skipped"] == {"missing_mask": 1}
