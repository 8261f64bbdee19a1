"""Tests of the CSV-manifest source: label kinds, relative paths, text and masks, and errors with line numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data.conftest import write_png
from xaiclip_cli.data.csv_manifest import CsvSource, read_manifest
from xaiclip_cli.errors import UsageError, XaiclipError


@pytest.fixture
def images(tmp_path: Path) -> Path:
    write_png(tmp_path / "img" / "a.png", (10, 20, 30))
    write_png(tmp_path / "img" / "b.png", (40, 50, 60))
    write_png(tmp_path / "img" / "c.png", (70, 80, 90))
    m = np.zeros((10, 12), np.uint8)
    m[2:5, 3:7] = 255
    Image.fromarray(m).save(tmp_path / "img" / "a_mask.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "img" / "small_mask.png")
    return tmp_path


def _write(dirpath: Path, text: str) -> Path:
    p = dirpath / "m.csv"
    p.write_text(text)
    return p


def test_names_text_mask(images: Path) -> None:
    p = _write(images, "path,label,split,text,mask\n"
                       "img/a.png,tumour,test,a caption,img/a_mask.png\n"
                       "\n"
                       "img/b.png,normal,train,,\n"
                       f"{images / 'img' / 'c.png'},tumour,test,\"with, comma\",\n")
    src = CsvSource(p)
    assert src.class_names == ["normal", "tumour"]
    assert src.split_sizes() == {"train": 1, "val": 0, "test": 2}
    a = src.get("test", 0)
    assert a.label == 1 and a.text == "a caption" and a.image[0, 0].tolist() == [10, 20, 30]
    assert a.mask.dtype == np.uint8 and int(a.mask.sum()) == 12 and a.mask[2:5, 3:7].all()
    c = src.get("test", 1)
    assert c.text == "with, comma" and c.mask is None and c.index == 1
    assert src.get("train", 0).label == 0 and src.get("train", 0).text is None
    assert src.info().kind == "csv" and src.rows("test")[1].line == 5


def test_int_labels_and_given_names(images: Path) -> None:
    p = _write(images, "split,path,label\ntrain,img/a.png,2\nval,img/b.png,0\ntest,img/c.png,\n")
    src = CsvSource(p)
    assert src.class_names == ["0", "1", "2"] and src.get("train", 0).label == 2 and src.get("test", 0).label == -1
    p2 = _write(images, "path,label,split\nimg/a.png,dog,train\nimg/b.png,0,train\n")
    src2 = CsvSource(p2, class_names=["cat", "dog"])
    assert [r.label for r in src2.rows("train")] == [1, 0]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("path,label\nimg/a.png,0\n", ":1: header path,label is invalid (need path,label,split; optional text,mask; "
                                      "missing split)"),
        ("path,label,split,extra\n", "unknown extra"),
        ("path,label,split\n", "no rows after the header"),
        ("", "empty file"),
        ("path,label,split\nimg/a.png,0,train\nimg/zz.png,0,train\n", "m.csv:3: image "),
        ("path,label,split\nimg/a.png,0,dev\n", "m.csv:2: split 'dev' is not one of train, val, test"),
        ("path,label,split\nimg/a.png,cat,train\nimg/b.png,1,train\n", "m.csv:3: integer label among class-name"),
        ("path,label,split\nimg/a.png,0,train,x\n", "m.csv:2: 4 fields, the header has 3"),
        ("path,label,split\n,0,train\n", "m.csv:2: empty path"),
        ("path,label,split,mask\nimg/a.png,0,train,img/none.png\n", "m.csv:2: mask"),
    ],
)
def test_bad_manifests(images: Path, body: str, needle: str) -> None:
    p = _write(images, body)
    with pytest.raises(UsageError) as exc:
        CsvSource(p)
    msg = str(exc.value)
    assert "\n" not in msg and needle in msg and str(p) in msg and exc.value.exit_code == 2


def test_label_checks_with_given_names(images: Path) -> None:
    p = _write(images, "path,label,split\nimg/a.png,bird,train\n")
    with pytest.raises(UsageError, match="m.csv:2: unknown class name 'bird' \\(known: cat, dog\\)"):
        read_manifest(p, ["cat", "dog"])
    p = _write(images, "path,label,split\nimg/a.png,5,train\n")
    with pytest.raises(UsageError, match="m.csv:2: label 5 out of range 0..1"):
        read_manifest(p, ["cat", "dog"])


def test_missing_csv_and_mask_size(images: Path) -> None:
    with pytest.raises(UsageError, match="CSV manifest not found"):
        CsvSource(images / "none.csv")
    p = _write(images, "path,label,split,mask\nimg/a.png,0,train,img/small_mask.png\n")
    with pytest.raises(XaiclipError, match="m.csv:2: mask .* is 4x4, image is 12x10"):
        CsvSource(p).get("train", 0)
