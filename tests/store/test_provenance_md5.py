"""Provenance: dataset_md5 is the input file's own MD5 (resume refuses a swapped file); the official one beside it."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.data.conftest import make_npz
from tests.store.fakes import FakeBackend, FakeSource
from xaiclip_cli.data import medmnist as mm
from xaiclip_cli.errors import UsageError
from xaiclip_cli.store.image import ImageOptions, run_image_stage, source_attrs


def test_medmnist_store_records_the_files_own_md5_and_the_official_one(tmp_path: Path) -> None:
    npz = tmp_path / "bloodmnist.npz"
    make_npz(npz)
    attrs = source_attrs(mm.MedMNISTSource("bloodmnist", path=npz), "medmnist:bloodmnist")
    own = hashlib.md5(npz.read_bytes()).hexdigest()
    assert attrs["dataset_md5"] == own
    assert attrs["dataset_md5_official"] == mm.expected_md5("bloodmnist", 28) != own  # a synthetic, not the official


class _FileSource(FakeSource):
    """The fake images, said to come from a real file (whose bytes the test swaps)."""

    def __init__(self, file: Path) -> None:
        super().__init__()
        self.file = file

    def info(self):  # noqa: ANN201
        return dataclasses.replace(super().info(), file=str(self.file), md5=None)


@pytest.mark.parametrize("keep_parts", [False, True])
def test_resume_refuses_a_swapped_input_file(tmp_path: Path, keep_parts: bool) -> None:
    data = tmp_path / "images.npz"
    np.savez(data, x=np.arange(10))
    h5 = tmp_path / "s.h5"
    opts = {"part_rows": 4, "batch_size": 3, "materialize": not keep_parts}
    run_image_stage(_FileSource(data), FakeBackend(), ImageOptions(h5=h5, **opts))
    with h5py.File(h5, "r") as f:
        assert f.attrs["dataset_md5"] == hashlib.md5(data.read_bytes()).hexdigest()
        assert "dataset_md5_official" not in f.attrs  # only MedMNIST publishes one
    assert run_image_stage(_FileSource(data), FakeBackend(), ImageOptions(h5=h5, **opts)).rows_written == 0
    np.savez(data, x=np.arange(11))  # same name, other content
    with pytest.raises(UsageError, match="MD5"):
        run_image_stage(_FileSource(data), FakeBackend(), ImageOptions(h5=h5, **opts))
