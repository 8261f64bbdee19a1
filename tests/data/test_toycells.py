"""Tests of the synthetic toy-cells generator, its shipped npz and ToyCellsSource."""

from __future__ import annotations

import hashlib
import zipfile

import numpy as np
import pytest

from xaiclip_cli.data import toycells as T
from xaiclip_cli.data.toycells import (
    SHIPPED_KWARGS,
    TOYCELLS_CAPTIONS,
    TOYCELLS_CLASSES,
    ToyCellsSource,
    generate_toycells,
    toycells_path,
    write_toycells_npz,
)

KEYS = {f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels", "masks", "nuclei")}


@pytest.fixture(scope="module")
def small() -> dict[str, np.ndarray]:
    return generate_toycells(n_train=50, n_val=10, n_test=15, size=48, seed=3)


@pytest.fixture(scope="module")
def shipped() -> ToyCellsSource:
    return ToyCellsSource()


def test_names_and_captions() -> None:
    assert TOYCELLS_CLASSES == ["lymphocyte", "neutrophil", "eosinophil", "basophil", "monocyte"]
    assert set(TOYCELLS_CAPTIONS) == set(TOYCELLS_CLASSES)
    for name, caps in TOYCELLS_CAPTIONS.items():
        assert len(caps) >= 3 and len(set(caps)) == len(caps)
        assert any(name in c for c in caps)


def test_keys_shapes_dtypes(small: dict[str, np.ndarray]) -> None:
    assert set(small) == KEYS
    for split, n in (("train", 50), ("val", 10), ("test", 15)):
        assert small[f"{split}_images"].shape == (n, 48, 48, 3) and small[f"{split}_images"].dtype == np.uint8
        assert small[f"{split}_labels"].shape == (n, 1) and small[f"{split}_labels"].dtype == np.int64
        assert small[f"{split}_masks"].shape == (n, 48, 48) and small[f"{split}_masks"].dtype == np.uint8
        assert set(np.unique(small[f"{split}_masks"])) <= {0, 1}
        assert small[f"{split}_nuclei"].shape == (n, 48, 48) and small[f"{split}_nuclei"].dtype == np.uint8


def test_nuclei_lie_inside_the_cell_mask(small: dict[str, np.ndarray]) -> None:
    for split in ("train", "val", "test"):
        cell, nuc = small[f"{split}_masks"].astype(bool), small[f"{split}_nuclei"].astype(bool)
        assert (nuc & ~cell).sum() <= 0.01 * nuc.sum()  # soft edges may differ by a rim pixel
        assert 1.5 * nuc.sum() < cell.sum()  # the cell is the larger region


def test_deterministic_bytes(tmp_path) -> None:
    kw = dict(n_train=12, n_val=5, n_test=6, size=32, seed=7)
    a, b = write_toycells_npz(tmp_path / "a.npz", **kw), write_toycells_npz(tmp_path / "b.npz", **kw)
    assert a.read_bytes() == b.read_bytes()
    other = generate_toycells(**{**kw, "seed": 8})
    with np.load(a) as z:
        assert not np.array_equal(z["train_images"], other["train_images"])
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file


def test_split_streams_independent() -> None:
    a = generate_toycells(n_train=10, n_val=3, n_test=3, size=32, seed=1)
    b = generate_toycells(n_train=10, n_val=7, n_test=3, size=32, seed=1)
    assert np.array_equal(a["train_images"], b["train_images"])
    assert np.array_equal(a["test_masks"], b["test_masks"])


def test_balanced(small: dict[str, np.ndarray]) -> None:
    counts = np.bincount(small["train_labels"][:, 0], minlength=5)
    assert counts.tolist() == [10] * 5
    assert np.bincount(small["test_labels"][:, 0], minlength=5).tolist() == [3] * 5


def test_masks_nonempty_and_inside(small: dict[str, np.ndarray]) -> None:
    for split in ("train", "val", "test"):
        m = small[f"{split}_masks"]
        area = m.reshape(len(m), -1).sum(1)
        assert (area >= 20).all() and (area < 0.5 * 48 * 48).all()
        # The target cell never touches the border, so neither does its discriminative region.
        assert m[:, 0].sum() == m[:, -1].sum() == m[:, :, 0].sum() == m[:, :, -1].sum() == 0


def test_class_differences_shipped(shipped: ToyCellsSource) -> None:
    imgs, labs = shipped.images("train"), shipped.labels("train")[:, 0]
    # Statistics of the nucleus + granule region (the finer mask); the cell mask holds it.
    with np.load(toycells_path()) as z:
        masks = z["train_nuclei"]
    assert np.bincount(labs, minlength=5).tolist() == [200] * 5
    rgb = np.stack([(imgs[labs == c] * masks[labs == c][..., None]).sum((0, 1, 2)) / masks[labs == c].sum()
                    for c in range(5)])
    area = np.array([masks[labs == c].mean() * 64 * 64 for c in range(5)])
    lym, neu, eos, bas, mono = range(5)
    # Eosinophils' red-orange granules make the masked region the reddest by a wide margin.
    assert rgb[eos, 0] - rgb[eos, 2] > 50 and all(rgb[c, 0] - rgb[c, 2] < 0 for c in (lym, neu, bas, mono))
    # Lymphocyte and basophil regions are dark (dense nucleus / dark granules); neutrophil and monocyte lighter.
    assert rgb[[lym, bas]].mean(1).max() + 30 < rgb[[neu, mono]].mean(1).min()
    # Lymphocytes are the smallest cells; monocytes and eosinophils have the largest discriminative regions.
    assert area[lym] + 30 < area[[neu, bas]].min() and area[[eos, mono]].min() > area[[lym, neu, bas]].max()
    # Granular classes show many small dark-or-bright spots outside the nucleus: a higher local contrast.
    grad = np.abs(np.diff(imgs.astype(float).mean(-1), axis=2))
    sharp = np.array([(grad[labs == c] * masks[labs == c][:, :, 1:]).sum() / masks[labs == c].sum() for c in range(5)])
    assert sharp[[neu, eos, bas]].min() > 1.5 * sharp[[lym, mono]].max()


def test_shipped_file(shipped: ToyCellsSource) -> None:
    path = toycells_path()
    assert path.name == "toycells_64.npz" and path.stat().st_size <= 4 * 1024 * 1024
    with zipfile.ZipFile(path) as zf:
        assert {n[:-4] for n in zf.namelist()} == KEYS
    assert shipped.split_sizes() == {"train": 1000, "val": 200, "test": 300}
    info = shipped.info()
    assert info.kind == "toycells" and info.image_size == 64 and info.class_names == TOYCELLS_CLASSES
    assert info.md5 == hashlib.md5(path.read_bytes()).hexdigest()
    s = shipped.get("val", 7)
    assert s.image.shape == (64, 64, 3) and s.mask is not None and s.mask.shape == (64, 64)
    assert s.label == int(shipped.labels("val")[7, 0]) and s.split == "val" and s.index == 7


@pytest.mark.slow
def test_shipped_file_reproducible(shipped: ToyCellsSource) -> None:
    # Same machine: byte-identical. Across CPUs, NumPy's SIMD exp/sin/cos may differ in the last ulp, which can
    # flip the rounding of a rare pixel by one grey level, so allow that and nothing more.
    fresh = generate_toycells(**SHIPPED_KWARGS)
    for split in ("train", "val", "test"):
        assert np.array_equal(fresh[f"{split}_labels"], shipped.labels(split))
        diff = np.abs(fresh[f"{split}_images"].astype(int) - shipped.images(split))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-4
        assert (fresh[f"{split}_masks"] != shipped.masks(split)).mean() < 1e-4


def test_regenerates_missing_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(T, "SHIPPED_KWARGS", {"n_train": 5, "n_val": 5, "n_test": 5, "size": 32, "seed": 0})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    import xaiclip_cli.resources as res

    monkeypatch.setattr(res, "resource_dir", lambda *parts: tmp_path.joinpath("pkg", *parts))
    p = toycells_path()
    assert p == tmp_path / "pkg" / "toycells" / "toycells_64.npz" and p.exists()
    assert ToyCellsSource(p).split_sizes() == {"train": 5, "val": 5, "test": 5}
    # A read-only package folder (here: a file where the folder should be) falls back to the user cache.
    (tmp_path / "ro").write_text("")
    monkeypatch.setattr(res, "resource_dir", lambda *parts: tmp_path.joinpath("ro", *parts))
    assert toycells_path() == tmp_path / "cache" / "xaiclip" / "toycells_64.npz"
    assert toycells_path().exists()


def test_cli_main(tmp_path, capsys) -> None:
    out = tmp_path / "x.npz"
    assert T.main(["--out", str(out), "--n-train", "5", "--n-val", "0", "--n-test", "5", "--size", "32",
                   "--preview", str(tmp_path / "p.png")]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    src = ToyCellsSource(out)
    assert src.split_sizes() == {"train": 5, "val": 0, "test": 5}
    assert (tmp_path / "p.png").stat().st_size > 0
