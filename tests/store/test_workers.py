"""store image --workers N: spawned loader processes give byte-identical rows, the same failures, no leftovers."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.store.fakes import FakeBackend, FakeSource
from xaiclip_cli.cli.main import app
from xaiclip_cli.store.image import ImageOptions, run_image_stage

runner = CliRunner()


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def _datasets(path: Path) -> dict[str, bytes]:
    """Every row dataset's raw bytes (string columns as their joined text: object arrays hold pointers)."""
    out = {}
    with h5py.File(path, "r") as f:
        for k in f:
            if isinstance(f[k], h5py.Dataset):
                v = f[k][...]
                out[k] = b"|".join(map(bytes, v)) if v.dtype == object else v.tobytes()
    return out


@pytest.mark.slow
def test_toy_vit_workers_2_is_byte_identical_to_in_process(tmp_path: Path) -> None:
    shm_before = _shm()
    out = {}
    for w in (0, 2):
        h5 = tmp_path / f"w{w}.h5"
        r = runner.invoke(app, ["store", "image", "--backend", "toy", "--model", "toy-vit", "--dataset", "toycells",
                                "--limit", "7", "--batch-size", "3", "--part-rows", "8", "--workers", str(w),
                                "--h5", str(h5), "--quiet"])
        assert r.exit_code == 0, r.output
        out[w] = _datasets(h5)
        with h5py.File(h5, "r") as f:
            assert int(f.attrs["workers"]) == w
            assert int(f.attrs["n_written"]) == 21
    assert set(out[0]) == set(out[2]) and "image_token_features" in out[0]
    for k in out[0]:
        assert out[0][k] == out[2][k], k
    assert multiprocessing.active_children() == []  # the pool was reaped
    assert _shm() - shm_before == set()  # no shared-memory segment left behind


class _BadAt(FakeSource):
    """A source whose train image ``bad`` cannot be decoded (picklable: spawned workers rebuild it)."""

    def __init__(self, bad: int) -> None:
        super().__init__({"train": 20, "val": 4, "test": 4})
        self.bad = bad

    def get(self, split: str, index: int):  # type: ignore[no-untyped-def]
        if split == "train" and index == self.bad:
            raise ValueError(f"cannot decode train image {index}: truncated file")
        return super().get(split, index)


@pytest.mark.slow
def test_a_bad_image_fails_the_same_way_with_workers(tmp_path: Path) -> None:
    errors, written = {}, {}
    for w in (0, 2):
        h5 = tmp_path / f"b{w}.h5"
        with pytest.raises(ValueError) as exc:
            run_image_stage(_BadAt(13), FakeBackend(), ImageOptions(h5=h5, part_rows=8, batch_size=3, workers=w,
                                                                     materialize=False))
        errors[w] = str(exc.value)
        # Whether part 0 was already sealed when the error surfaced depends on the writer's timed commit
        # grouping, in either mode; what must match is which parts exist (sealed or left to resume).
        parts = sorted(p.name.removesuffix(".partial") for p in (tmp_path / f"b{w}.parts").iterdir())
        written[w] = parts
    assert errors[0] == errors[2] == "cannot decode train image 13: truncated file"
    assert written[0] == written[2] and "part-00000.h5" in written[0]  # the rows before the bad batch are kept
    assert multiprocessing.active_children() == []


def test_negative_workers_is_a_usage_error_exit_2(tmp_path: Path) -> None:
    r = runner.invoke(app, ["store", "image", "--workers", "-1", "--h5", str(tmp_path / "x.h5")])
    assert r.exit_code == 2 and "workers" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.h5").exists()
    from xaiclip_cli.errors import UsageError

    with pytest.raises(UsageError, match="--workers must be 0 or more"):
        run_image_stage(FakeSource(), FakeBackend(), ImageOptions(h5=tmp_path / "y.h5", workers=-2))
    assert not (tmp_path / "y.h5").exists()
    np.testing.assert_equal(multiprocessing.active_children(), [])
