"""Oracles of metrics.md §6.7 (localisation) and §11 (bootstrap, paired comparison, comparable settings)."""

from __future__ import annotations

import numpy as np
import pytest

from xaiclip_cli.errors import UsageError
from xaiclip_cli.metrics import bootstrap as B
from xaiclip_cli.metrics import localization as L
from xaiclip_cli.metrics.insertion_deletion import InvalidMap


def _mask() -> np.ndarray:
    g = np.zeros((64, 64), bool)
    g[20:30, 20:30] = True
    return g


def test_pointing_game_inside_outside_and_tolerance() -> None:
    g = _mask()
    m = np.zeros((64, 64))
    m[25, 25] = 1
    assert L.pointing_hit(m, g, 15)
    m = np.zeros((64, 64))
    m[25, 29 + 14] = 1  # 14 px right of the mask edge: inside tol 15 (14² < 15²)
    assert L.pointing_hit(m, g, 15) and not L.pointing_hit(m, g, 0)
    m = np.zeros((64, 64))
    m[25, 29 + 16] = 1  # 16 px: outside
    assert not L.pointing_hit(m, g, 15)
    m = np.zeros((64, 64))
    m[25, 29 + 15] = 1  # exactly 15 px: strict inequality -> miss
    assert not L.pointing_hit(m, g, 15)
    m = np.ones((64, 64))  # ties: first row-major peak (0,0) is far from the mask
    assert L.peak(m) == (0, 0) and not L.pointing_hit(m, g, 15)


def test_energy_iou_dice_auprc() -> None:
    g = _mask()
    m = g.astype(float) * np.linspace(1, 2, 64)[None]
    assert L.energy(m, g) == pytest.approx(1.0)
    v = L.image_metrics(g.astype(float), g, [0.5], otsu=True)
    assert v["iou@0.5"] == 1.0 and v["dice@0.5"] == 1.0 and v["auprc"] == pytest.approx(1.0)
    assert v["iou@otsu"] == 1.0 and v["chance"] == pytest.approx(100 / 4096)
    half = np.zeros((64, 64))
    half[20:30, 20:25] = 1
    i, d = L.iou_dice(half, g, 0.5)
    assert i == pytest.approx(0.5) and d == pytest.approx(2 * 50 / 150)
    assert L.energy(np.zeros((64, 64)), g) is None


def test_map_resized_to_mask_and_bad_masks() -> None:
    g = _mask()
    small = np.zeros((8, 8))
    small[2:4, 2:4] = 1  # covers pixels 16..31 after resize
    v = L.image_metrics(small, g, [0.5])
    assert v["pointing_hit"] == 1.0
    with pytest.raises(InvalidMap) as e:
        L.image_metrics(small, np.zeros((64, 64)), [0.5])
    assert e.value.reason == "empty_mask"
    with pytest.raises(InvalidMap) as e:
        L.image_metrics(np.full((8, 8), np.nan), g, [0.5])
    assert e.value.reason == "nan"


def test_thresholds_tuning_and_tertiles() -> None:
    assert L.parse_thresholds("0.2:0.4:0.1") == [0.2, 0.3, 0.4]
    assert L.parse_thresholds("otsu") == "otsu"
    with pytest.raises(ValueError):
        L.parse_thresholds("1.5")
    g = _mask()
    m = g * 0.3 + 0.1  # min-max: mask 1, rest 0 -> any t in grid gives IoU 1; first t wins
    assert L.tune_threshold([m, m], [g, g], [0, 0]) == {0: 0.2}
    assert L.area_tertiles(np.array([1, 2, 3, 4, 5, 6])).tolist() == ["small", "small", "medium", "medium",
                                                                       "large", "large"]


def test_bootstrap_seeded_and_paired() -> None:
    v = np.random.default_rng(0).normal(size=50)
    a, b = B.bootstrap_ci(v, 1000, 3), B.bootstrap_ci(v, 1000, 3)
    assert a == b and a["ci_low"] < a["mean"] < a["ci_high"]
    assert a["mean"] == pytest.approx(v.mean())
    p = B.paired_comparison(v + 1.0, v, 500, 1)
    assert p["mean"] == pytest.approx(1.0) and p["ci_low"] == pytest.approx(1.0) and p["wilcoxon_p"] < 1e-6
    assert B.paired_comparison(v, v)["wilcoxon_p"] == 1.0
    with pytest.raises(UsageError, match="steps"):
        B.check_comparable({"steps": 50, "baseline": "black"}, {"steps": 20, "baseline": "black"})
    B.check_comparable({"steps": 50}, {"steps": 50})


def test_first_regions_share_by_hand() -> None:
    # 4×4 label map with ids 3, 5, 7, 9 (2×2 quadrants); the mask covers quadrant 5 fully and 1 pixel of 9.
    labels = np.array([[3, 3, 5, 5], [3, 3, 5, 5], [7, 7, 9, 9], [7, 7, 9, 9]])
    mask = np.zeros((4, 4), bool)
    mask[0:2, 2:4] = True
    mask[3, 3] = True
    one = L.first_regions_share(labels, np.array([5, 9, 3, 7]), mask, 1)
    assert one == {"pixel_share": 1.0, "area_share": 5 / 16, "region_share": 1.0, "region_chance": 0.25}
    two = L.first_regions_share(labels, np.array([9, 5, 3, 7]), mask, 2)
    assert two["pixel_share"] == 5 / 8 and two["region_share"] == 0.5  # region 9 is 1/4 inside: not mostly
    assert L.first_regions_share(labels, np.array([3, 7, 5, 9]), mask, 2)["pixel_share"] == 0.0
    with pytest.raises(ValueError, match="differ in size"):
        L.first_regions_share(labels, np.array([3]), mask[:3], 1)
