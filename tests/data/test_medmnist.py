"""Tests of MedMNIST metadata, file resolution, MD5 checks, opt-in download and MedMNISTSource."""

from __future__ import annotations

import hashlib
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from tests.data.conftest import make_npz
from xaiclip_cli.data import medmnist as mm
from xaiclip_cli.data.medmnist import MedMNISTSource
from xaiclip_cli.errors import UsageError, XaiclipError

BLOOD_MD5 = {28: "7053d0359d879ad8a5505303e11de1dc", 64: "2b94928a2ae4916078ca51e05b6b800b",
             128: "adace1e0ed228fccda1f39692059dd4c", 224: "b718ff6835fcbdb22ba9eacccd7b2601"}


def test_metadata_bloodmnist(capsys) -> None:
    mm.medmnist_info.cache_clear()
    flags = mm.flags_2d()
    assert capsys.readouterr().out == ""  # loading medmnist metadata keeps stdout clean
    assert len(flags) == 12 and "bloodmnist" in flags and not any(f.endswith("3d") for f in flags)
    assert mm.class_names("bloodmnist") == [
        "basophil", "eosinophil", "erythroblast",
        "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
        "lymphocyte", "monocyte", "neutrophil", "platelet",
    ]
    info = mm.flag_info("BloodMNIST")
    assert info["n_samples"] == {"train": 11959, "val": 1712, "test": 3421} and info["n_channels"] == 3
    assert {s: mm.expected_md5("bloodmnist", s) for s in mm.SIZES} == BLOOD_MD5
    assert mm.file_name("bloodmnist") == "bloodmnist.npz" and mm.file_name("bloodmnist", 224) == "bloodmnist_224.npz"
    assert mm.download_url("bloodmnist", 64).startswith("https://zenodo.org/records/10519652/files/bloodmnist_64.npz")
    assert mm.flag_info("chestmnist")["task"].startswith("multi-label")


def test_bad_flag_and_size() -> None:
    with pytest.raises(UsageError, match="'organmnist3d' is a 3-D volume dataset; xaiclip reads 2-D images only"):
        mm.flag_info("organmnist3d")
    with pytest.raises(UsageError, match="unknown MedMNIST flag 'nosuchmnist'; known 2D flags: pathmnist"):
        mm.flag_info("nosuchmnist")
    with pytest.raises(UsageError, match="size 32 is not available; use one of 28, 64, 128, 224"):
        mm.file_name("bloodmnist", 32)


def test_source_reads_fixture(blood_root) -> None:
    root, arrays = blood_root
    src = MedMNISTSource("bloodmnist", data_root=root)
    assert src.split_sizes() == {"train": 16, "val": 4, "test": 8}
    s = src.get("test", 5)
    assert np.array_equal(s.image, arrays["test_images"][5]) and s.label == int(arrays["test_labels"][5, 0])
    info = src.info()
    assert info.kind == "medmnist" and info.ref == "medmnist:bloodmnist" and info.md5 == BLOOD_MD5[28]
    assert info.class_names[0] == "basophil" and info.extra["official_sizes"]["train"] == 11959
    assert info.extra["task"] == "multi-class" and info.extra["md5_verified"] is False


def test_grey_and_multilabel_flags(tmp_path: Path) -> None:
    make_npz(tmp_path / "pneumoniamnist_64.npz", size=64, channels=1, n_classes=2)
    src = MedMNISTSource("pneumoniamnist", size=64, data_root=tmp_path)
    assert src.get("train", 0).image.shape == (64, 64, 1)
    make_npz(tmp_path / "chestmnist.npz", channels=1, n_labels=14)
    s = MedMNISTSource("chestmnist", data_root=tmp_path).get("val", 1)
    assert s.label == -1 and s.targets.shape == (14,)


def test_mismatches_with_metadata(tmp_path: Path) -> None:
    make_npz(tmp_path / "pneumoniamnist.npz", channels=3)
    with pytest.raises(UsageError, match="3 channel\\(s\\), pneumoniamnist has 1"):
        MedMNISTSource("pneumoniamnist", data_root=tmp_path)
    make_npz(tmp_path / "bloodmnist_64.npz", size=28)
    with pytest.raises(UsageError, match="images are 28 px but size 64 was asked for"):
        MedMNISTSource("bloodmnist", size=64, data_root=tmp_path)
    make_npz(tmp_path / "chestmnist.npz", channels=1, n_labels=1)
    with pytest.raises(UsageError, match="labels have 1 column\\(s\\), chestmnist"):
        MedMNISTSource("chestmnist", data_root=tmp_path)


def test_missing_file_names_path_md5_and_download(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as exc:
        MedMNISTSource("bloodmnist", size=224, data_root=tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg and str(tmp_path / "bloodmnist_224.npz") in msg and BLOOD_MD5[224] in msg
    assert "--download" in msg and exc.value.exit_code == 2


def test_default_root_from_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDMNIST_ROOT", str(tmp_path))
    assert mm.default_root() == tmp_path
    make_npz(tmp_path / "bloodmnist.npz")
    assert MedMNISTSource("bloodmnist").path == tmp_path / "bloodmnist.npz"


def test_verify_md5(blood_root) -> None:
    root, _ = blood_root
    with pytest.raises(UsageError) as exc:
        MedMNISTSource("bloodmnist", data_root=root, verify=True)
    assert BLOOD_MD5[28] in str(exc.value) and "differs" in str(exc.value)
    real = hashlib.md5((root / "bloodmnist.npz").read_bytes()).hexdigest()
    assert mm.verify_md5(root / "bloodmnist.npz", real) == real


def test_download_offline_is_clear_error(tmp_path: Path, monkeypatch) -> None:
    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(mm.urllib.request, "urlopen", offline)
    with pytest.raises(XaiclipError) as exc:
        MedMNISTSource("bloodmnist", data_root=tmp_path, download=True)
    msg = str(exc.value)
    assert not isinstance(exc.value, UsageError) and "cannot download https://zenodo.org" in msg
    assert "Name or service not known" in msg and BLOOD_MD5[28] in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []  # no partial file left


def test_download_checks_md5_and_renames(tmp_path: Path, monkeypatch) -> None:
    src_file = tmp_path / "remote" / "bloodmnist.npz"
    src_file.parent.mkdir()
    make_npz(src_file)
    good = hashlib.md5(src_file.read_bytes()).hexdigest()
    monkeypatch.setattr(mm, "download_url", lambda flag, size=28: src_file.as_uri())
    monkeypatch.setattr(mm, "expected_md5", lambda flag, size=28: "0" * 32)
    root = tmp_path / "root"
    with pytest.raises(XaiclipError, match="has MD5 .* expected 0000"):
        mm.download("bloodmnist", 28, root / "bloodmnist.npz")
    assert not (root / "bloodmnist.npz").exists() and list(root.iterdir()) == []
    monkeypatch.setattr(mm, "expected_md5", lambda flag, size=28: good)
    src = MedMNISTSource("bloodmnist", data_root=root, download=True)
    assert src.path == root / "bloodmnist.npz" and src.split_sizes()["train"] == 16
