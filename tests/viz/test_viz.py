"""Colormaps, overlays and the CAM figure (matplotlib/PIL, no OpenCV)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from xaiclip_cli.viz.colormap import apply_colormap
from xaiclip_cli.viz.figure import cam_figure
from xaiclip_cli.viz.overlay import as_rgb, overlay, resize_map


def test_colormap_matches_matplotlib_endpoints() -> None:
    import matplotlib

    vals = np.array([[0.0, 1.0], [0.5, 2.0]])
    out = apply_colormap(vals, "jet")
    jet = matplotlib.colormaps["jet"]
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[0, 0], np.round(np.array(jet(0.0)[:3]) * 255).astype(np.uint8))
    np.testing.assert_array_equal(out[1, 1], out[0, 1])  # values are clipped to [0, 1]
    with pytest.raises(ValueError, match="unknown colormap"):
        apply_colormap(vals, "no-such-map")


def test_overlay_blend_and_resolution() -> None:
    img = np.full((10, 20, 3), 100, np.uint8)
    vals = np.zeros((4, 4), np.float32)
    out = overlay(img, vals, alpha=0.5, colormap="gray")
    assert out.shape == (10, 20, 3)
    np.testing.assert_array_equal(out, np.full((10, 20, 3), 50, np.uint8))  # 0.5*100 + 0.5*black
    assert np.array_equal(overlay(img, vals, alpha=0.0), img)
    assert as_rgb(np.zeros((3, 3, 1), np.uint8)).shape == (3, 3, 3)
    assert resize_map(np.ones((2, 2), np.float32), (5, 7)).shape == (5, 7)


def test_cam_figure_writes_png(tmp_path) -> None:
    p = tmp_path / "fig.png"
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 1), dtype=np.uint8)
    cam_figure(img, np.random.default_rng(1).random((8, 8)), [0.2, 0.8], ["a", "b"], 1, str(p), title="t")
    with Image.open(p) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]
    assert not list(tmp_path.glob("*.tmp*"))


def test_short_label_keeps_the_distinguishing_end() -> None:
    from xaiclip_cli.viz.figure import short_label

    assert short_label("a microscopic image of a lymphocyte cell") == "…opic image of a lymphocyte cell"
    assert short_label("a cell") == "a cell"
    assert len(short_label("x" * 100)) == 32
