"""Tests of the image-folder source: class folders, split folders, order, unlabelled images, corrupt files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.data.conftest import write_png
from xaiclip_cli.data.folder import FolderSource
from xaiclip_cli.errors import UsageError, XaiclipError


def test_class_folders_all_train(tmp_path: Path) -> None:
    write_png(tmp_path / "b_cls" / "2.png", (0, 0, 255))
    write_png(tmp_path / "b_cls" / "10.jpg", (0, 255, 0))
    write_png(tmp_path / "a_cls" / "x.PNG", (255, 0, 0), mode="L")
    (tmp_path / "a_cls" / "notes.txt").write_text("not an image")
    src = FolderSource(tmp_path)
    assert src.class_names == ["a_cls", "b_cls"] and not src.split_folders
    assert src.split_sizes() == {"train": 3, "val": 0, "test": 0}
    assert [p.name for p in src.paths("train")] == ["x.PNG", "10.jpg", "2.png"]  # sorted relative path
    s0, s2 = src.get("train", 0), src.get("train", 2)
    assert s0.label == 0 and s0.image.shape == (10, 12, 3) and s0.image.dtype == np.uint8
    assert int(s0.image[0, 0, 0]) == int(s0.image[0, 0, 1]) == 76  # grey L of pure red, replicated to RGB
    assert s2.label == 1 and s2.image[0, 0].tolist() == [0, 0, 255] and s2.path.endswith("2.png")
    assert src.info().extra["split_folders"] is False
    assert FolderSource(tmp_path, split="test").split_sizes() == {"train": 0, "val": 0, "test": 3}


def test_split_folders_and_unlabelled(tmp_path: Path) -> None:
    write_png(tmp_path / "train" / "cat" / "a.png", (1, 2, 3))
    write_png(tmp_path / "train" / "dog" / "b.png", (4, 5, 6))
    write_png(tmp_path / "test" / "dog" / "c.png", (7, 8, 9))
    write_png(tmp_path / "test" / "loose.png", (10, 11, 12))
    write_png(tmp_path / "ignored" / "d.png", (0, 0, 0))
    src = FolderSource(tmp_path)
    assert src.split_folders and src.class_names == ["cat", "dog"]
    assert src.split_sizes() == {"train": 2, "val": 0, "test": 2}
    assert [(s.label, s.image[0, 0].tolist()) for s in src.get_many("test", [0, 1])] == [(1, [7, 8, 9]),
                                                                                        (-1, [10, 11, 12])]


def test_corrupt_image_one_line(tmp_path: Path) -> None:
    write_png(tmp_path / "c" / "ok.png", (1, 1, 1))
    bad = tmp_path / "c" / "zz_bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    src = FolderSource(tmp_path)
    with pytest.raises(XaiclipError) as exc:
        src.get("train", 1)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: cannot read image") and exc.value.exit_code == 1


def test_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="image folder not found"):
        FolderSource(tmp_path / "missing")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(UsageError, match="no image files found"):
        FolderSource(tmp_path)
    write_png(tmp_path / "k" / "a.png", (0, 0, 0))
    with pytest.raises(UsageError, match="split 'dev' is not one of"):
        FolderSource(tmp_path, split="dev")
    with pytest.raises(UsageError, match="index 1 out of range"):
        FolderSource(tmp_path).get("train", 1)
