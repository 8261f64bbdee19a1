"""Tests of data references: every accepted form opens the right source; bad references list the forms."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.conftest import make_npz, write_png
from xaiclip_cli.data.csv_manifest import CsvSource
from xaiclip_cli.data.folder import FolderSource
from xaiclip_cli.data.medmnist import MedMNISTSource
from xaiclip_cli.data.npz import NpzSource
from xaiclip_cli.data.refs import open_source
from xaiclip_cli.data.toycells import ToyCellsSource, write_toycells_npz
from xaiclip_cli.errors import UsageError


def test_forms(tmp_path: Path, blood_root) -> None:
    root, _ = blood_root
    assert isinstance(open_source("toycells"), ToyCellsSource)
    assert open_source("toycells", size=64).image_size == 64
    small = write_toycells_npz(tmp_path / "t32.npz", n_train=5, n_val=0, n_test=5, size=32)
    assert open_source(f"toycells:{small}").image_size == 32
    m = open_source("medmnist:bloodmnist", data_root=root)
    assert isinstance(m, MedMNISTSource) and m.flag == "bloodmnist"
    make_npz(root / "bloodmnist_64.npz", size=64)
    assert open_source("medmnist:BloodMNIST_64", data_root=root).image_size == 64
    assert open_source("medmnist:bloodmnist", size=64, data_root=root).image_size == 64
    assert open_source(f"medmnist:{root / 'bloodmnist_64.npz'}").info().md5 == "2b94928a2ae4916078ca51e05b6b800b"
    assert isinstance(open_source(f"npz:{root / 'bloodmnist.npz'}"), NpzSource)
    write_png(tmp_path / "f" / "c" / "a.png", (1, 2, 3))
    assert isinstance(open_source(f"folder:{tmp_path / 'f'}"), FolderSource)
    (tmp_path / "f" / "m.csv").write_text("path,label,split\nc/a.png,0,test\n")
    assert isinstance(open_source(f"csv:{tmp_path / 'f' / 'm.csv'}"), CsvSource)


@pytest.mark.parametrize(
    ("ref", "needle"),
    [
        ("", "missing kind"),
        ("bloodmnist", "missing kind or argument"),
        ("hdf5:x.h5", "unknown kind 'hdf5'"),
        ("medmnist:", "missing kind or argument"),
        ("medmnist:blood-mnist", "cannot read a MedMNIST flag"),
        ("medmnist:bloodmnist_64", "size 64 in the reference differs from size 128"),
        ("toycells", "toy cells are 64 px, size 128 was asked for"),
    ],
)
def test_bad_refs(ref: str, needle: str) -> None:
    with pytest.raises(UsageError) as exc:
        open_source(ref, size=128)
    msg = str(exc.value)
    assert needle in msg and "accepted forms: toycells" in msg and "\n" not in msg


def test_missing_targets(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="MedMNIST file not found"):
        open_source(f"medmnist:{tmp_path / 'bloodmnist.npz'}")
    with pytest.raises(UsageError, match="image folder not found"):
        open_source(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(UsageError, match="file not found"):
        open_source(f"toycells:{tmp_path / 'nope.npz'}")
