"""attrib show: the rank map helper, curve/AUC summary on hand-computed values, the PNG, bad results."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from xaiclip_cli.errors import UsageError
from xaiclip_cli.viz.attrib_figure import curves, rank_map, region_ids, render, summary


def _tiny_result() -> dict:
    """k = 2 of 3 regions, numbers chosen so that both AUCs are easy to compute by hand."""
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]], dtype=np.int16)
    return {
        "labels": labels, "order": np.array([1, 0], np.int16),
        "consistency": np.float32([0.5, 0.9]), "collaboration": np.float32([0.6, 0.95]),
        "objective": np.float32([1.1, 1.85]), "area_ins": np.float32([0.0, 0.5, 1.0]),
        "area_del": np.float32([0.0, 0.5, 1.0]), "p_full": np.float32(0.9), "p_black": np.float32(0.05),
    }


def test_rank_map_gives_k_minus_position_and_zero_to_unranked() -> None:
    r = _tiny_result()
    m = rank_map(r["labels"], r["order"])
    expect = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(m, expect)
    assert m.dtype == np.float32
    # label ids with gaps: the order names ids as returned (never renumbered)
    gap = np.where(r["labels"] == 2, 7, r["labels"]).astype(np.int16)
    np.testing.assert_array_equal(rank_map(gap, np.array([7, 1, 0])), np.where(gap == 7, 3, np.where(gap == 1, 2, 1)))
    # an order that only fits as indices into the ascending ids is mapped through them
    np.testing.assert_array_equal(region_ids(gap, np.array([2, 0])), [7, 0])


def test_rank_map_smoothing_keeps_the_ranking_of_large_regions() -> None:
    labels = np.repeat(np.repeat(np.arange(4).reshape(2, 2), 16, 0), 16, 1)
    sm = rank_map(labels, np.array([3, 0, 2, 1]), smooth=2.0)
    assert not np.array_equal(sm, rank_map(labels, np.array([3, 0, 2, 1])))
    centres = [sm[8, 8], sm[8, 24], sm[24, 8], sm[24, 24]]  # ids 0, 1, 2, 3 → ranks 3, 1, 2, 4
    np.testing.assert_allclose(centres, [3, 1, 2, 4], atol=0.01)
    with pytest.raises(UsageError, match="smooth"):
        rank_map(labels, np.array([0]), smooth=-1.0)


def test_summary_auc_matches_hand_computation() -> None:
    s = summary(_tiny_result())
    # insertion y = [1 − q_k, c_1, c_2] = [0.05, 0.5, 0.9] on x = [0, .5, 1]
    assert s["insertion_auc"] == pytest.approx(0.5 * (0.05 + 0.5) / 2 + 0.5 * (0.5 + 0.9) / 2, abs=1e-7)
    # deletion y = [c_k, 1 − q_1, 1 − q_2] = [0.9, 0.4, 0.05]
    assert s["deletion_auc"] == pytest.approx(0.5 * (0.9 + 0.4) / 2 + 0.5 * (0.4 + 0.05) / 2, abs=1e-7)
    assert s["objective_max_index"] == 1 and s["objective_max_regions"] == 2
    assert s["objective_max"] == pytest.approx(1.85) and s["objective_max_area"] == 1.0
    assert s["regions"] == 3 and s["ranked"] == 2
    assert s["p_full"] == pytest.approx(0.9) and s["p_black"] == pytest.approx(0.05)
    np.testing.assert_allclose(curves(_tiny_result())["del_x"], [0, 0.5, 1])


def test_summary_equals_a_direct_sklearn_auc_of_the_recorded_curves() -> None:
    from sklearn.metrics import auc

    rng = np.random.default_rng(0)
    r = _tiny_result()
    p = r["labels"].size
    for _ in range(5):
        c, q = rng.random(2), rng.random(2)
        r["consistency"], r["collaboration"] = c.astype(np.float32), q.astype(np.float32)
        r["area_del"] = (np.sort(rng.integers(0, p + 1, 3)) / p).astype(np.float32)  # whole pixel counts, as recorded
        c, q = r["consistency"].astype(np.float64), r["collaboration"].astype(np.float64)
        ins = auc(r["area_ins"].astype(np.float64), np.r_[1 - q[-1], c])
        dele = auc(r["area_del"].astype(np.float64), np.r_[c[-1], 1 - q])
        s = summary(r)
        assert (s["insertion_auc"], s["deletion_auc"]) == pytest.approx((ins, dele), abs=1e-7)


def _cells_result(tmp_path):
    """A result on a real toy-cells image: SLICO regions, ranked by the green channel (enough for a picture)."""
    import cv2

    from xaiclip_cli.data.refs import open_source

    img = open_source("toycells").images("test")[0]
    sl = cv2.ximgproc.createSuperpixelSLIC(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), algorithm=cv2.ximgproc.SLICO,
                                           region_size=9, ruler=20.0)
    sl.iterate(20)
    labels = sl.getLabels().astype(np.int16)
    ids = np.unique(labels)
    order = ids[np.argsort([-img[..., 1][labels == i].mean() for i in ids], kind="stable")].astype(np.int16)
    k = len(order)
    area = np.cumsum([0.0] + [float((labels == i).mean()) for i in order]).astype(np.float32)
    c = np.linspace(0.1, 0.9, k).astype(np.float32)
    res = {"labels": labels, "order": order, "consistency": c, "collaboration": c[::-1].copy(),
           "objective": (c + c[::-1]).astype(np.float32), "area_ins": area, "area_del": area.copy(),
           "p_full": np.float32(0.9), "p_black": np.float32(0.1)}
    np.savez_compressed(tmp_path / "r.npz", **res)
    return img, np.load(tmp_path / "r.npz"), k


def test_render_writes_a_readable_picture_of_the_right_size(tmp_path) -> None:
    img, res, k = _cells_result(tmp_path)
    out = render(res, img, tmp_path / "sub" / "fig.png", top_m=5, smooth=1.0)
    assert out == tmp_path / "sub" / "fig.png" and out.is_file()
    assert not list(out.parent.glob(".*tmp*"))
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (1700, 460)
        px = np.asarray(im.convert("RGB")).astype(np.int16)
    assert px.std() > 20  # not blank
    yellow = (px[..., 0] > 230) & (px[..., 1] > 200) & (px[..., 2] < 40)
    assert yellow.sum() > 500  # region borders are drawn
    assert k > 10 and summary(res)["regions"] == k


@pytest.mark.parametrize(("change", "needle"), [
    (lambda r: r.pop("consistency"), "lacks 'consistency'"),
    (lambda r: r.update(order=np.array([], np.int16)), "empty order"),
    (lambda r: r.update(objective=np.float32([1.0])), "objective has 1 values"),
    (lambda r: r.update(area_ins=np.float32([0, 1])), "k+1"),
    (lambda r: r.update(consistency=np.float32([np.nan, 1])), "NaN"),
    (lambda r: r.update(order=np.array([1, 9], np.int16)), "absent from labels"),
    (lambda r: r.update(labels=np.zeros(16, np.int16)), "2-D"),
    (lambda r: r.update(area_del=np.float32([1.0, 0.5, 0.0])), "non-decreasing"),
    (lambda r: r.update(area_ins=np.float32([0.0, 0.5, 1.5])), "non-decreasing"),
])
def test_bad_results_are_one_line_usage_errors(tmp_path, change, needle) -> None:
    r = _tiny_result()
    change(r)
    with pytest.raises(UsageError) as exc:
        render(r, np.zeros((4, 4, 3), np.uint8), tmp_path / "x.png")
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "x.png").exists()


def test_render_refuses_a_wrong_image_size_or_top(tmp_path) -> None:
    r = _tiny_result()
    with pytest.raises(UsageError, match="model size"):
        render(r, np.zeros((8, 8, 3), np.uint8), tmp_path / "x.png")
    with pytest.raises(UsageError, match="--top"):
        render(r, np.zeros((4, 4, 3), np.uint8), tmp_path / "x.png", top_m=0)
    assert not (tmp_path / "x.png").exists()
