"""Cell geometry of CAM layers: measured receptive-field centres, and upsampling that places cells there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.explain import tiny_backends as tb
from xaiclip_cli.explain.api import explain
from xaiclip_cli.explain.cam.engine import upsample_maps
from xaiclip_cli.explain.layers import LayerInfo
from xaiclip_cli.explain.registration import CellGeometry, receptive_field_centres, upsample_registered


class LinearTower:
    """A linear conv stack with all-one kernels: its receptive fields are symmetric boxes, centres known exactly."""

    def __init__(self, *convs: nn.Conv2d) -> None:
        self.net = nn.Sequential(*convs)
        with torch.no_grad():
            for c in convs:
                c.weight.fill_(1.0)
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def vision_module(self) -> nn.Module:
        return self.net

    def encode_image(self, x: torch.Tensor):
        return self.net(x).mean((1, 2, 3))[:, None], None


def _layer(tower: LinearTower, size: int) -> LayerInfo:
    with torch.no_grad():
        a = tower.net(torch.zeros(1, 3, size, size))
    name = str(len(tower.net) - 1)
    return LayerInfo(name, tuple(a.shape), "NCHW", 0, tuple(a.shape[-2:]))


def test_same_padded_stride_two_convs_centre_cells_on_s_times_o() -> None:
    # k3/s2/p1 twice: cell o of the stride-4 map is centred on input pixel 4·o, not on 4·o + 1.5 (half-pixel).
    tower = LinearTower(nn.Conv2d(3, 2, 3, 2, 1, bias=False), nn.Conv2d(2, 2, 3, 2, 1, bias=False))
    geo = receptive_field_centres(tower, _layer(tower, 32), (32, 32), seeds=1)
    assert (geo.stride_y, geo.stride_x) == (4.0, 4.0)
    assert geo.centre_y == pytest.approx(0.0, abs=1e-9) and geo.centre_x == pytest.approx(0.0, abs=1e-9)


def test_patchify_conv_is_half_pixel() -> None:
    tower = LinearTower(nn.Conv2d(3, 2, 4, 4, bias=False))
    geo = receptive_field_centres(tower, _layer(tower, 32), (32, 32), seeds=1)
    assert geo == CellGeometry.half_pixel((32, 32), (8, 8))
    assert geo.centre_y == pytest.approx(1.5)


def test_half_pixel_geometry_equals_interpolate() -> None:
    m = torch.randn(2, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = F.interpolate(m[:, None], size=(50, 31), mode="bilinear", align_corners=False)[:, 0]
    got = upsample_registered(m, (50, 31), CellGeometry.half_pixel((50, 31), (7, 5)))
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)


def test_registered_cells_land_on_their_centres() -> None:
    # A map with one hot cell: after upsampling, the peak sits on that cell's centre c + s·o (here 3 + 8·2 = 19).
    m = torch.zeros(1, 4, 4, dtype=torch.float64)
    m[0, 2, 1] = 1.0
    up = upsample_registered(m, (32, 32), CellGeometry(3.0, 3.0, 8.0, 8.0))
    peak = divmod(int(up[0].argmax()), 32)
    assert peak == (19, 11) and float(up[0, 19, 11]) == pytest.approx(1.0)
    assert float(up[0, 19, 15]) == pytest.approx(0.5)  # half-way to the next cell centre


def test_explain_records_the_alignment(tmp_path) -> None:
    be = tb.tiny_cnn_backend()
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    rf = explain(be, img, ["a round cell", "a dog"], target=0)[0]
    hp = explain(be, img, ["a round cell", "a dog"], target=0, align="half-pixel")[0]
    np.testing.assert_array_equal(rf.raw, hp.raw)  # same map, placed differently
    side = rf.sidecar()
    assert side["align"] == "receptive-field" and side["cell_geometry"]["stride_y"] == 32.0
    expect = upsample_maps(torch.from_numpy(hp.raw)[None], (64, 64))[0].numpy()
    np.testing.assert_allclose(hp.map, expect, atol=1e-6)
    assert hp.sidecar()["align"] == "half-pixel" and hp.sidecar()["cell_geometry"] is None
    geo = CellGeometry(**side["cell_geometry"])
    np.testing.assert_allclose(rf.map, upsample_maps(torch.from_numpy(rf.raw)[None], (64, 64), geometry=geo)[0],
                               atol=1e-3)


def test_token_grids_stay_half_pixel() -> None:
    be = tb.tiny_vit_backend()
    img = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    res = explain(be, img, ["a", "b"], target=1)[0]
    assert res.sidecar()["cell_geometry"] is None and res.sidecar()["align"] == "half-pixel"
