"""store image from folders of 16-bit PNGs: the decoded values reach the model and the mapping is recorded."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from tests.store.fakes import SIZE, FakeBackend, expected_features
from xaiclip_cli.data.refs import open_source
from xaiclip_cli.store import layout as L
from xaiclip_cli.store.image import ImageOptions, run_image_stage
from xaiclip_cli.store.index import read_meta


def _ramp(i: int) -> np.ndarray:
    """An 8x8 16-bit ramp over a narrow band (Pillow's 8-bit conversion made all of these 255)."""
    return (20000 + 100 * i + 37 * np.arange(SIZE * SIZE)).reshape(SIZE, SIZE).astype(np.uint16)


@pytest.mark.parametrize("intensity", ["auto", "window:21000,2000"])
def test_store_image_of_16bit_folder(tmp_path: Path, intensity: str) -> None:
    root = tmp_path / "imgs" / "cls"
    root.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(_ramp(i)).save(root / f"r{i}.png")
    source = open_source(f"folder:{tmp_path / 'imgs'}", intensity=intensity)
    h5 = tmp_path / "s.h5"
    res = run_image_stage(source, FakeBackend(), ImageOptions(h5=h5, layout="single", batch_size=2))
    assert res.complete and res.rows_written == 3
    with h5py.File(h5, "r") as f:
        prov = read_meta(f, L.META_PROVENANCE)
        feats = f["image_features"][:]
    rec = prov["intensity"]
    assert rec["requested"]["kind"] == intensity.split(":")[0]
    first = rec["first_image"]
    assert first["source_dtype"] == "uint16" and first["path"].endswith("r0.png")
    assert (first["min"], first["max"]) == (float(_ramp(0).min()), float(_ramp(0).max()))
    assert first["kind"] == ("minmax" if intensity == "auto" else "window")
    for i in range(3):
        v = _ramp(i).astype(np.float64)
        if intensity == "auto":
            lo, hi = v.min(), v.max()
        else:
            lo, hi = 20000.0, 22000.0
        grey = np.rint(np.clip((v - lo) * 255.0 / (hi - lo), 0, 255)).astype(np.uint8)
        assert len(np.unique(grey)) > 40  # the band is spread, not saturated
        cls, _ = expected_features(np.repeat(grey[:, :, None], 3, axis=2))
        np.testing.assert_allclose(feats[i], cls, atol=1e-6)


def test_store_of_uint8_dataset_records_no_mapping(tmp_path: Path) -> None:
    from tests.store.fakes import FakeSource

    h5 = tmp_path / "s.h5"
    run_image_stage(FakeSource(), FakeBackend(), ImageOptions(h5=h5, layout="single"))
    with h5py.File(h5, "r") as f:
        assert "intensity" not in read_meta(f, L.META_PROVENANCE)
