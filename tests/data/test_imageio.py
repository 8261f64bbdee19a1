"""The one image decoder: 16-bit/float files keep their order, 8-bit files are unchanged, DICOM and volumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xaiclip_cli.data.formats import parse_intensity
from xaiclip_cli.data.imageio import decode_image, load_image, to_uint8
from xaiclip_cli.data.refs import open_source
from xaiclip_cli.errors import UsageError, XaiclipError

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402


def _testfile(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not bundled")
    return str(path)


def _gradient16() -> np.ndarray:
    """A 16-bit horizontal ramp over 1000..61000 (most of the range; Pillow's 8-bit conversion saturates it)."""
    return np.tile(np.linspace(1000, 61000, 512).astype(np.uint16), (8, 1))


def _check_order(stored: np.ndarray, out: np.ndarray, levels: int = 250) -> None:
    flat_in, flat_out = stored.reshape(-1).astype(np.float64), out[..., 0].reshape(-1).astype(np.int64)
    order = np.argsort(flat_in, kind="stable")
    assert np.all(np.diff(flat_out[order]) >= 0), "value order lost"
    assert len(np.unique(out)) > levels, f"only {len(np.unique(out))} grey levels survive"
    assert out.min() == 0 and out.max() == 255
    assert (out == 255).mean() < 0.01, "saturated"


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_gradient_keeps_its_order(tmp_path: Path, suffix: str) -> None:
    g = _gradient16()
    Image.fromarray(g).save(tmp_path / f"g{suffix}")
    d = decode_image(tmp_path / f"g{suffix}")
    assert d.image.shape == (8, 512, 1) and d.image.dtype == np.uint8
    _check_order(g, d.image)
    assert d.mapping["kind"] == "minmax" and d.mapping["source_dtype"] == "uint16"
    assert (d.mapping["min"], d.mapping["max"]) == (1000.0, 61000.0)
    rgb = load_image(tmp_path / f"g{suffix}")  # sources get RGB: the grey replicated, not re-mapped
    assert rgb.shape == (8, 512, 3) and np.array_equal(rgb[..., 0], d.image[..., 0])


def test_float_tiff_and_16bit_colour(tmp_path: Path) -> None:
    f = np.tile(np.linspace(-3.5, 12.25, 400, dtype=np.float32), (4, 1))
    Image.fromarray(f).save(tmp_path / "f.tif")
    d = decode_image(tmp_path / "f.tif")
    _check_order(f, d.image)
    assert d.mapping["source_dtype"] == "float32" and d.mapping["min"] == pytest.approx(-3.5)

    import cv2

    g = _gradient16()
    rgb16 = np.stack([g, g[:, ::-1], np.full_like(g, 30000)], axis=-1)
    cv2.imwrite(str(tmp_path / "c.png"), rgb16[:, :, ::-1])  # OpenCV writes BGR
    c = decode_image(tmp_path / "c.png")
    assert c.image.shape == (8, 512, 3) and c.mapping["source_dtype"] == "uint16"
    _check_order(g, c.image[..., :1])
    assert np.array_equal(c.image[:, ::-1, 1], c.image[:, :, 0])  # the reversed ramp is the second channel


def test_8bit_images_unchanged_bit_for_bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(40, 200, (20, 30, 3), dtype=np.uint8)  # not full range: min-max would stretch it
    grey = rng.integers(10, 90, (20, 30), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.tif")
    Image.fromarray(rgb).save(tmp_path / "rgb.bmp")
    for name in ("rgb.png", "rgb.tif", "rgb.bmp"):
        d = decode_image(tmp_path / name)
        assert np.array_equal(d.image, rgb) and d.mapping["kind"] == "identity", name
    g = decode_image(tmp_path / "grey.png")
    assert g.image.shape == (20, 30, 1) and np.array_equal(g.image[..., 0], grey)
    assert np.array_equal(load_image(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, axis=2))
    # explicit mappings apply to 8-bit files too
    mm = decode_image(tmp_path / "grey.png", "minmax").image[..., 0]
    assert mm.min() == 0 and mm.max() == 255 and not np.array_equal(mm, grey)


def test_window_and_percentile_mappings() -> None:
    v = np.arange(0, 1001, dtype=np.uint16).reshape(1, -1)
    w, facts = to_uint8(v, "window:500,200")
    assert facts["kind"] == "window" and facts["params"] == {"center": 500.0, "width": 200.0}
    assert w[0, 400] == 0 and w[0, 600] == 255 and w[0, 500] in (127, 128) and w[0, 399] == 0 and w[0, 601] == 255
    p, facts = to_uint8(v, "percentile:10,90")
    assert facts["lo"] == pytest.approx(100) and facts["hi"] == pytest.approx(900)
    assert p[0, 100] == 0 and p[0, 900] == 255 and p[0, 500] in (127, 128)
    flat, facts = to_uint8(np.full((3, 3), 7, np.uint16))
    assert not flat.any() and facts["min"] == facts["max"] == 7


@pytest.mark.parametrize("bad", ["window:40", "window:40,0", "window:a,b", "percentile:90,10", "percentile:-1,50",
                                 "gamma", "minmax:3", "window:nan,4", ""])
def test_bad_intensity_values(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_intensity(bad)


def test_dicom_ct_rescale_and_mr_window() -> None:
    ct = pydicom.dcmread(_testfile("CT_small.dcm"))
    d = decode_image(_testfile("CT_small.dcm"))
    hu = ct.pixel_array.astype(np.float64) * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    assert d.image.shape == (128, 128, 1) and d.mapping["format"] == "dicom"
    assert d.mapping["rescale"] == {"slope": 1.0, "intercept": -1024.0}
    assert (d.mapping["min"], d.mapping["max"]) == (hu.min(), hu.max())  # min-max of HU, not of stored values
    _check_order(hu, d.image, levels=200)  # the CT holds fewer distinct HU values than 256
    soft = decode_image(_testfile("CT_small.dcm"), "window:40,400").image[..., 0]  # a soft-tissue window in HU
    assert np.array_equal(soft[hu <= -160], np.zeros((hu <= -160).sum(), np.uint8))
    assert (soft[hu >= 240] == 255).all()

    mr = decode_image(_testfile("MR_small.dcm"))  # the file's own window 600/1600
    assert mr.mapping["kind"] == "dicom-window" and mr.mapping["params"]["center"] == 600.0
    stored = pydicom.dcmread(_testfile("MR_small.dcm")).pixel_array
    assert (mr.image[..., 0][stored >= 1400] == 255).all() and mr.image[..., 0][stored < 1390].max() < 255
    forced = decode_image(_testfile("MR_small.dcm"), "minmax")
    assert forced.mapping["kind"] == "minmax" and forced.image.max() == 255 and forced.image.min() == 0


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_testfile("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    normal = decode_image(_testfile("MR_small.dcm")).image
    inv = decode_image(tmp_path / "m1.dcm")
    assert inv.mapping["inverted"] is True and np.array_equal(inv.image, 255 - normal)
    # archives often drop the suffix: the DICM magic is recognised
    (tmp_path / "noext").write_bytes((tmp_path / "m1.dcm").read_bytes())
    assert np.array_equal(decode_image(tmp_path / "noext").image, inv.image)


def test_dicom_refusals_name_file_and_syntax(tmp_path: Path) -> None:
    with pytest.raises(XaiclipError, match=r"examples_ybr_color.dcm: multi-frame DICOM \(30 frames, JPEG Baseline"):
        decode_image(_testfile("examples_ybr_color.dcm"))
    with pytest.raises(XaiclipError, match=r"MR_small_jpeg_ls_lossless.dcm: DICOM transfer syntax JPEG-LS Lossless "
                       r"Image Compression \(1.2.840.10008.1.2.4.80\) cannot be decoded here"):
        decode_image(_testfile("MR_small_jpeg_ls_lossless.dcm"))
    with pytest.raises(XaiclipError, match="rtplan.dcm: DICOM file holds no image"):
        decode_image(_testfile("rtplan.dcm"))
    with pytest.raises(XaiclipError, match="MR_truncated.dcm: DICOM pixel data cannot be read"):
        decode_image(_testfile("MR_truncated.dcm"))
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(XaiclipError, match="junk.dcm: cannot read DICOM file"):
        decode_image(tmp_path / "junk.dcm")


def test_volumes_and_damaged_files_refused(tmp_path: Path) -> None:
    (tmp_path / "brain.nii.gz").write_bytes(b"\x1f\x8b fake")
    with pytest.raises(XaiclipError, match=r"brain.nii.gz: a 3-D volume .* is not supported"):
        decode_image(tmp_path / "brain.nii.gz")
    Image.fromarray(_gradient16()).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(XaiclipError, match="cut.png: cannot read image"):
        decode_image(tmp_path / "cut.png")
    frames = [Image.fromarray(_gradient16()) for _ in range(3)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(XaiclipError, match=r"stack.tif: a multi-page TIFF \(3 pages\)"):
        decode_image(tmp_path / "stack.tif")


def test_folder_and_csv_sources_read_dicom_and_16bit(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    (root / "ct").mkdir(parents=True)
    (root / "ramp").mkdir()
    (root / "ct" / "a.dcm").write_bytes(Path(_testfile("CT_small.dcm")).read_bytes())
    Image.fromarray(_gradient16()).save(root / "ramp" / "r.png")
    src = open_source(f"folder:{root}")
    assert src.split_sizes()["train"] == 2 and src.info().class_names == ["ct", "ramp"]
    s0, s1 = src.get("train", 0), src.get("train", 1)
    assert s0.image.shape == (128, 128, 3) and s0.intensity["format"] == "dicom"
    assert s1.intensity["kind"] == "minmax" and len(np.unique(s1.image)) > 250
    assert src.info().extra["intensity"] == {"kind": "auto", "params": {}}
    win = open_source(f"folder:{root}", intensity="window:40,400")
    assert win.get("train", 0).intensity["kind"] == "window"
    (tmp_path / "m.csv").write_text("path,label,split\nimgs/ct/a.dcm,ct,test\nimgs/ramp/r.png,ramp,test\n")
    csv_src = open_source(f"csv:{tmp_path / 'm.csv'}", intensity="percentile:1,99")
    assert csv_src.get("test", 1).intensity["kind"] == "percentile"

    (root / "ramp" / "vol.nii").write_bytes(b"x")
    with pytest.raises(UsageError, match="vol.nii: a 3-D volume"):
        open_source(f"folder:{root}")
    (tmp_path / "v.csv").write_text("path,label,split\nimgs/ramp/vol.nii,ramp,test\n")
    with pytest.raises(UsageError, match=r"v.csv:2: .*vol.nii: a 3-D volume"):
        open_source(f"csv:{tmp_path / 'v.csv'}")
    with pytest.raises(UsageError, match="--intensity window:1,2 applies to image files"):
        open_source("toycells", intensity="window:1,2")


def test_mapping_is_json_serialisable() -> None:
    d = decode_image(_testfile("MR_small.dcm"))
    assert json.loads(json.dumps(d.mapping))["kind"] == "dicom-window"
