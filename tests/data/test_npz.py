"""Tests of the MedMNIST-format npz reader: values, lazy loading, grey/multi-label, and every validation error."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.data.conftest import make_npz
from xaiclip_cli.data import npz as npz_mod
from xaiclip_cli.data.npz import NpzSource, read_npz_headers
from xaiclip_cli.errors import UsageError, XaiclipError


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


def test_reads_values_rgb(tmp_path: Path) -> None:
    arrays = make_npz(tmp_path / "a.npz")
    src = NpzSource(tmp_path / "a.npz")
    assert src.split_sizes() == {"train": 16, "val": 4, "test": 8} and len(src) == 28
    s = src.get("val", 3)
    assert np.array_equal(s.image, arrays["val_images"][3]) and s.image.dtype == np.uint8
    assert s.label == int(arrays["val_labels"][3, 0]) and s.split == "val" and s.index == 3 and s.mask is None
    s.image[:] = 0  # samples are copies: the cached split is unchanged
    assert np.array_equal(src.get("val", 3).image, arrays["val_images"][3])
    many = src.get_many("test", [7, 0, 7])
    assert [m.index for m in many] == [7, 0, 7]
    assert np.array_equal(many[0].image, arrays["test_images"][7]) and np.array_equal(many[1].image,
                                                                                      arrays["test_images"][0])
    assert src.labels("train").dtype == np.int64 and src.labels("train").shape == (16, 1)
    info = src.info()
    assert info.image_size == 28 and info.extra["channels"] == 3 and info.file == str(tmp_path / "a.npz")


def test_grey_is_hw1_and_multilabel(tmp_path: Path) -> None:
    arrays = make_npz(tmp_path / "g.npz", channels=1, n_labels=14)
    src = NpzSource(tmp_path / "g.npz")
    s = src.get("train", 5)
    assert s.image.shape == (28, 28, 1) and np.array_equal(s.image[:, :, 0], arrays["train_images"][5])
    assert s.label == -1 and np.array_equal(s.targets, arrays["train_labels"][5])
    assert src.info().extra["n_labels"] == 14


def test_flat_labels_and_masks(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    masks = {f"{s}_masks": rng.integers(0, 2, (n, 28, 28)).astype(bool) for s, n in (("train", 16), ("val", 4),
                                                                                   ("test", 8))}
    arrays = make_npz(tmp_path / "m.npz", train_labels=np.arange(16, dtype=np.int32) % 8, **masks)
    src = NpzSource(tmp_path / "m.npz", require_masks=True)
    s = src.get("train", 9)
    assert s.label == 1 and s.mask.dtype == np.uint8 and np.array_equal(s.mask, arrays["train_masks"][9])


def test_lazy_once_per_process(tmp_path: Path, monkeypatch) -> None:
    make_npz(tmp_path / "a.npz")
    calls: list[str] = []
    real = np.load

    def counting(*a, **k):
        calls.append(str(a[0]))
        return real(*a, **k)

    monkeypatch.setattr(npz_mod.np, "load", counting)
    src = NpzSource(tmp_path / "a.npz")
    assert calls == []  # opening reads headers only
    for i in range(4):
        src.get("train", i)
    assert len(calls) == 2  # images and labels of train, once each
    src._pid = os.getpid() + 1  # as if this object had been inherited by a forked worker
    src.get("train", 0)
    assert len(calls) == 4


def test_headers_without_decompressing(tmp_path: Path) -> None:
    make_npz(tmp_path / "a.npz", channels=1)
    h = read_npz_headers(tmp_path / "a.npz")
    assert h["train_images"] == ((16, 28, 28), np.dtype(np.uint8)) and h["test_labels"][0] == (8, 1)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"val_labels": None}, "missing keys val_labels"),
        ({"train_images": np.zeros((16, 28, 28, 3), np.float32)}, "dtype float32, expected uint8"),
        ({"train_images": np.zeros((16, 28, 27, 3), np.uint8)}, "expected (N,S,S) or (N,S,S,3)"),
        ({"train_images": np.zeros((16, 28, 28, 4), np.uint8)}, "expected (N,S,S) or (N,S,S,3)"),
        ({"test_images": np.zeros((8, 32, 32, 3), np.uint8)}, "other splits have"),
        ({"train_labels": np.zeros((15, 1), np.int64)}, "train_labels has shape (15, 1), expected (16, 1)"),
        ({"train_labels": np.zeros((16, 1), np.float32)}, "expected integers"),
    ],
)
def test_bad_npz(tmp_path: Path, overrides: dict, needle: str) -> None:
    make_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(UsageError) as exc:
        NpzSource(tmp_path / "bad.npz")
    msg = _one_line(exc)
    assert needle in msg and str(tmp_path / "bad.npz") in msg


def test_wrong_keys_and_missing_masks(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "x.npz", x=np.zeros((2, 28, 28), np.uint8), y=np.zeros((2, 1)))
    with pytest.raises(UsageError) as exc:
        NpzSource(tmp_path / "x.npz")
    assert "missing keys train_images" in _one_line(exc) and "has x, y" in str(exc.value)
    make_npz(tmp_path / "a.npz")
    with pytest.raises(UsageError, match="missing keys train_masks"):
        NpzSource(tmp_path / "a.npz", require_masks=True)


def test_missing_and_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as exc:
        NpzSource(tmp_path / "nope.npz")
    assert "file not found" in _one_line(exc) and exc.value.exit_code == 2
    (tmp_path / "c.npz").write_bytes(b"not a zip at all")
    with pytest.raises(XaiclipError) as exc2:
        NpzSource(tmp_path / "c.npz")
    assert "not a readable .npz" in _one_line(exc2) and exc2.value.exit_code == 1
    assert not isinstance(exc2.value, UsageError)


def test_bad_index_and_split(tmp_path: Path) -> None:
    make_npz(tmp_path / "a.npz", sizes={"train": 3, "test": 2}, val_images=None, val_labels=None)
    src = NpzSource(tmp_path / "a.npz", required_splits=("train",))
    assert src.split_sizes() == {"train": 3, "val": 0, "test": 2}
    with pytest.raises(UsageError, match="index 3 out of range for split 'train' of size 3"):
        src.get("train", 3)
    with pytest.raises(UsageError, match="no split 'val'"):
        src.get("val", 0)
    with pytest.raises(UsageError, match="index -1"):
        src.get_many("test", [0, -1])


def test_mask_kinds_and_nuclei_masks(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    sizes = (("train", 16), ("val", 4), ("test", 8))
    extra = {f"{s}_{k}": rng.integers(0, 2, (n, 28, 28)).astype(np.uint8)
             for s, n in sizes for k in ("masks", "nuclei")}
    arrays = make_npz(tmp_path / "n.npz", **extra)
    src = NpzSource(tmp_path / "n.npz", require_masks=True)
    assert src.mask_kinds() == ("cell", "nuclei")
    assert np.array_equal(src.get_mask("test", 5, "nuclei"), arrays["test_nuclei"][5])
    assert np.array_equal(src.get_mask("test", 5, "cell"), arrays["test_masks"][5])
    assert np.array_equal(src.get_mask("test", 5), src.get("test", 5).mask)
    src.get_mask("test", 5, "nuclei")[:] = 7  # a copy: the cached split is unchanged
    assert np.array_equal(src.get_mask("test", 5, "nuclei"), arrays["test_nuclei"][5])
    # no masks at all (MedMNIST): no kind; asking for nuclei is a one-line UsageError, the cell kind is None
    make_npz(tmp_path / "plain.npz")
    plain = NpzSource(tmp_path / "plain.npz")
    assert plain.mask_kinds() == () and plain.get_mask("test", 0) is None
    with pytest.raises(UsageError) as exc:
        plain.get_mask("test", 0, "nuclei")
    assert "no nuclei masks" in _one_line(exc)
    # nuclei only in some splits: not a kind of the source; a bad shape is refused at open like masks
    make_npz(tmp_path / "part.npz", test_nuclei=extra["test_nuclei"])
    assert NpzSource(tmp_path / "part.npz").mask_kinds() == ()
    make_npz(tmp_path / "bad.npz", test_nuclei=np.zeros((8, 27, 27), np.uint8))
    with pytest.raises(UsageError, match="test_nuclei has shape"):
        NpzSource(tmp_path / "bad.npz")
