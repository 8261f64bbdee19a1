"""Image reading, normalise-once preparation and fills (smdl.md §2, §7); attribute_image returns label ids."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.explain.smdl.pipeline import attribute_image, prepare, read_image_bgr
from xaiclip_cli.explain.smdl.search import SmdlConfig


def _pre(a: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float()[None] / 255 - 0.5) / 0.25


def test_read_image_bgr_non_ascii_grey_and_resize(tmp_path) -> None:
    grey = (np.arange(40 * 30) % 251).astype(np.uint8).reshape(30, 40)
    p = tmp_path / "zellé_细胞.png"
    ok, buf = cv2.imencode(".png", grey)
    buf.tofile(str(p))
    img = read_image_bgr(p, 16)
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[..., 0], img[..., 2])
    np.testing.assert_array_equal(img[..., 0], cv2.resize(grey, (16, 16), interpolation=cv2.INTER_LINEAR))
    with pytest.raises(XaiclipError, match="not found"):
        read_image_bgr(tmp_path / "missing.png", 16)
    (tmp_path / "odd.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(XaiclipError, match="cannot read image"):
        read_image_bgr(tmp_path / "odd.png", 16)


def test_prepare_colour_and_fills() -> None:
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    x, b = prepare(_pre, bgr)
    torch.testing.assert_close(x, _pre(bgr[:, :, ::-1])[0], rtol=0, atol=0)
    torch.testing.assert_close(b, torch.full_like(x, -2.0), rtol=0, atol=0)
    xc, _ = prepare(_pre, bgr, bgr_compat=True)
    torch.testing.assert_close(xc, _pre(bgr)[0], rtol=0, atol=0)
    _, bm = prepare(_pre, bgr, fill="mean")
    assert bm.abs().max() == 0
    _, bb = prepare(_pre, bgr, fill="blur")
    torch.testing.assert_close(bb, _pre(cv2.GaussianBlur(bgr, (11, 11), 5)[:, :, ::-1])[0], rtol=0, atol=0)
    with pytest.raises(UsageError, match="unknown --fill"):
        prepare(_pre, bgr, fill="noise")
    with pytest.raises(UsageError, match="uint8"):
        prepare(_pre, bgr.astype(np.float32))
    with pytest.raises(UsageError, match="model input"):
        prepare(lambda a: _pre(cv2.resize(a, (4, 4))), bgr)


class _MeanScorer:
    """probs from the channel means of the 2×2 quadrants (deterministic, 3 classes)."""

    family = "softmax"
    n_classes = 3
    device = torch.device("cpu")
    forwards = 0
    model_seconds = 0.0
    w = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))

    def features(self, x):
        return torch.nn.functional.normalize(torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1), dim=-1)

    def probs(self, x):
        self.forwards += x.shape[0]
        return torch.softmax(self.features(x) @ self.w * 5, -1)


def test_attribute_image_maps_positions_to_label_ids() -> None:
    bgr = np.random.default_rng(1).integers(1, 256, (12, 12, 3), dtype=np.uint8)
    prior = np.arange(16, dtype=np.float32).reshape(4, 4)
    labels, r = attribute_image(_MeanScorer(), _pre, bgr, 1,
                                {"mode": "prior-patch", "prior": prior, "prior_grid": 4, "cells_per_region": 2},
                                SmdlConfig())
    assert sorted(r.order.tolist()) == sorted(np.unique(labels).tolist()) == list(range(8))
    assert r.area_ins[-1] == 1.0


def test_read_image_bgr_keeps_deep_and_dicom_images_and_8bit_parity(tmp_path) -> None:
    """8-bit files decode exactly as cv2.imdecode; a 16-bit ramp keeps its order (no saturation); DICOM decodes."""
    import cv2
    from PIL import Image
    from pydicom.data import get_testdata_file

    from xaiclip_cli.explain.smdl import read_image_bgr

    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    np.testing.assert_array_equal(read_image_bgr(tmp_path / "c.png", 32), cv2.imread(str(tmp_path / "c.png")))
    ramp = np.tile(np.linspace(30000, 31000, 256).astype(np.uint16), (8, 1))  # an 8-bit view would be all 255
    Image.fromarray(ramp).save(tmp_path / "r16.png")
    out = read_image_bgr(tmp_path / "r16.png", 256)[..., 0]
    assert len(np.unique(out)) > 250 and np.all(np.diff(out[4].astype(int)) >= 0)
    ct = read_image_bgr(get_testdata_file("CT_small.dcm", download=False), 64)
    assert ct.shape == (64, 64, 3) and ct.std() > 10
