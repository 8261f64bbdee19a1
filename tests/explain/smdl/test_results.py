"""Result files (smdl.md §8) and the recorded-curve AUC (metrics.md §1, oracle 8 of §6)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.oracle.smdl_ref import ref_recorded_auc
from xaiclip_cli.errors import XaiclipError
from xaiclip_cli.explain.smdl.results import export_reference, lambda_dir, load_npz, recorded_auc, save_npz
from xaiclip_cli.explain.smdl.search import SmdlResult, _areas


def _oracle8() -> tuple[np.ndarray, np.ndarray, SmdlResult]:
    """2×2 RGB image, pixel (1,0) black; regions in order {(0,0)}, {(0,1),(1,0)}, {(1,1)}."""
    img = np.full((2, 2, 3), 100, np.uint8)
    img[1, 0] = 0
    labels = np.array([[0, 1], [1, 2]], np.int32)
    order = np.array([0, 1, 2], np.int16)
    masks = np.stack([labels == i for i in range(3)])
    area_ins, area_del = _areas(masks, order, img.astype(int).sum(2) != 0)
    c = np.float32([0.5, 0.8, 0.9])
    q = np.float32([0.6, 0.85, 0.95])
    res = SmdlResult(order=order, confidence=np.float32([0.1, 0.2, 0.3]), effectiveness=np.float32([0, 0.5, 1]),
                     consistency=c, collaboration=q, objective=c + q, p_full=0.9, p_black=0.05, area_ins=area_ins,
                     area_del=area_del, front_len=None, forwards=0, seconds=0.0, model_seconds=0.0, prediction=0)
    return img, labels, res


def test_oracle8_smdl_protocol() -> None:
    _, labels, res = _oracle8()
    np.testing.assert_allclose(res.area_ins, [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(res.area_del, [0.25, 0.5, 0.75, 1.0])
    ins, dele = recorded_auc({"labels": labels, "consistency": res.consistency, "collaboration": res.collaboration,
                              "area_ins": res.area_ins, "area_del": res.area_del})
    assert ins == pytest.approx(0.44375, abs=1e-7)
    assert dele == pytest.approx(0.25625, abs=1e-7)


def test_npz_round_trip_and_legacy_layout_parity(tmp_path) -> None:
    img, labels, res = _oracle8()
    p = save_npz(tmp_path / "items" / "t" / "a.npz", labels, res)
    z = load_npz(p)
    assert set(z) == {"labels", "order", "confidence", "effectiveness", "consistency", "collaboration", "objective",
                      "p_full", "p_black", "area_ins", "area_del"}
    assert z["labels"].dtype == np.int16 and z["order"].dtype == np.int16 and z["consistency"].dtype == np.float32
    assert not list(tmp_path.rglob("*.partial*"))
    npy, js = export_reference(tmp_path / "exp", "slico", (0, 0.05, 1, 1), None, "cls", "a", img, labels, res)
    assert npy == tmp_path / "exp" / "slico-0.0-0.05-1.0-1.0" / "npy" / "cls" / "a.npy"
    regions = np.load(npy)
    assert regions.shape == (3, 2, 2, 3) and regions.dtype == np.uint8
    np.testing.assert_array_equal(regions.sum(0), img)
    doc = json.loads(js.read_text())
    assert set(doc) == {"sub-k", "confidence_score", "effectiveness_score", "consistency_score",
                        "collaboration_score", "smdl_score", "lambda1", "lambda2", "lambda3", "lambda4",
                        "smdl_score_max", "smdl_score_max_index"}
    assert doc["sub-k"] == 3 and doc["lambda2"] == 0.05 and doc["smdl_score_max_index"] == 2
    ins, dele = ref_recorded_auc(npy, js)
    assert ins == pytest.approx(0.44375, abs=1e-7) and dele == pytest.approx(0.25625, abs=1e-7)
    assert abs(ins - recorded_auc(z)[0]) <= 1e-9 and abs(dele - recorded_auc(z)[1]) <= 1e-9


def test_lambda_dir_names() -> None:
    assert lambda_dir("slico", (0, 0.05, 1, 1), None) == "slico-0.0-0.05-1.0-1.0"
    assert lambda_dir("seeds", (0, 0.05, 20, 1), 8) == "seeds-0.0-0.05-20.0-1.0-pending-samples-8"


def test_bad_result_files(tmp_path) -> None:
    with pytest.raises(XaiclipError, match="not found"):
        load_npz(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(XaiclipError, match="not a readable"):
        load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "partial.npz", order=np.arange(3))
    with pytest.raises(XaiclipError, match="lacks"):
        load_npz(tmp_path / "partial.npz")


def test_export_names_keep_unique_stems_and_spell_out_colliding_ones() -> None:
    from xaiclip_cli.errors import UsageError
    from xaiclip_cli.explain.smdl import export_names

    assert export_names(["test/test_00000", "test/test_00001"]) == {"test/test_00000": "test_00000",
                                                                    "test/test_00001": "test_00001"}
    assert export_names(["a/x", "b/x", "b/y"]) == {"a/x": "a__x", "b/x": "b__x", "b/y": "y"}
    with pytest.raises(UsageError, match="'a__x' and 'a/x' would both be written as a__x.npy"):
        export_names(["a__x", "a/x", "b/x"])
