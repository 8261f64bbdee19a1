"""Tests of the batch iterator: order, stacking, masks, errors re-raised in the consumer, early stop."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from tests.data.conftest import make_npz, write_png
from xaiclip_cli.data.folder import FolderSource
from xaiclip_cli.data.loader import iter_batches
from xaiclip_cli.data.npz import NpzSource
from xaiclip_cli.data.toycells import ToyCellsSource, write_toycells_npz
from xaiclip_cli.errors import XaiclipError


@pytest.mark.parametrize("prefetch", [0, 2])
def test_batches_in_order(tmp_path: Path, prefetch: int) -> None:
    arrays = make_npz(tmp_path / "a.npz")
    src = NpzSource(tmp_path / "a.npz")
    batches = list(iter_batches(src, "train", batch_size=5, prefetch=prefetch))
    assert [len(b.samples) for b in batches] == [5, 5, 5, 1]
    assert np.array_equal(np.concatenate([b.images for b in batches]), arrays["train_images"])
    assert np.array_equal(np.concatenate([b.labels for b in batches]), arrays["train_labels"][:, 0])
    picked = list(iter_batches(src, "test", indices=[7, 2, 5], batch_size=2, prefetch=prefetch))
    assert [b.indices.tolist() for b in picked] == [[7, 2], [5]]
    assert np.array_equal(picked[0].images[1], arrays["test_images"][2])


def test_masks_and_mixed_sizes(tmp_path: Path) -> None:
    src = ToyCellsSource(write_toycells_npz(tmp_path / "t.npz", n_train=4, n_val=0, n_test=0, size=32))
    (b,) = iter_batches(src, "train", batch_size=8)
    assert b.masks().shape == (4, 32, 32) and np.array_equal(b.masks(), src.masks("train"))
    write_png(tmp_path / "f" / "c" / "a.png", (1, 1, 1), size=(5, 5))
    write_png(tmp_path / "f" / "c" / "b.png", (1, 1, 1), size=(6, 5))
    (fb,) = iter_batches(FolderSource(tmp_path / "f"), "train")
    assert fb.images is None and [im.shape for im in fb.image_list()] == [(5, 5, 3), (5, 6, 3)] and fb.masks() is None


def test_error_reaches_consumer_and_early_stop(tmp_path: Path) -> None:
    write_png(tmp_path / "c" / "a.png", (1, 1, 1))
    (tmp_path / "c" / "b.png").write_bytes(b"junk")
    it = iter_batches(FolderSource(tmp_path), "train", batch_size=1, prefetch=1)
    assert next(it).indices.tolist() == [0]
    with pytest.raises(XaiclipError, match="b.png: cannot read image"):
        next(it)
    make_npz(tmp_path / "a.npz")
    before = threading.active_count()
    for _ in iter_batches(NpzSource(tmp_path / "a.npz"), "train", batch_size=1, prefetch=1):
        break
    assert threading.active_count() <= before  # the reader thread was stopped and joined
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_batches(NpzSource(tmp_path / "a.npz"), "train", batch_size=0))
