"""RowWriter: direct chunk token writes, grouped commits, fallbacks; commit groups and the progress total."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.store.fakes import FakeBackend, FakeSource, read_rows
from xaiclip_cli.store import layout as L
from xaiclip_cli.store import writer as writer_mod
from xaiclip_cli.store.image import ImageOptions, run_image_stage
from xaiclip_cli.store.writer import Batch, RowWriter, create_row_datasets, direct_chunk_ok, merge_adjacent

N, T, D = 10, 4, 3


def _batch(a: int, b: int, rng: np.random.Generator, tokens: bool = True) -> Batch:
    rows = np.arange(a, b)
    return Batch(a, b, rng.standard_normal((b - a, D)).astype(np.float32),
                 rng.standard_normal((b - a, T, D)).astype(np.float16) if tokens else None,
                 rows, rows % 3, (rows % 3).astype(np.uint8), rows.astype(np.int32),
                 np.tile(rows.astype(np.uint8)[:, None], (1, L.IMAGE_HASH_BYTES)))


def _file(path: Path) -> None:
    with h5py.File(path, "w") as f:
        create_row_datasets(f, N, D, T, "float32", True)


@pytest.mark.parametrize("direct_row_bytes", [0, 1 << 30], ids=["chunk-per-row", "write-per-batch"])
def test_grouped_commit_writes_exact_values_and_mask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     direct_row_bytes: int) -> None:
    monkeypatch.setattr(writer_mod, "DIRECT_ROW_BYTES", direct_row_bytes)  # both token paths, same values
    path = tmp_path / "p.h5"
    _file(path)
    rng = np.random.default_rng(0)
    bs = [_batch(0, 3, rng), _batch(3, 5, rng), _batch(7, 9, rng)]  # two adjacent, one apart: rows 5,6,9 stay empty
    with h5py.File(path, "r+") as f:
        rw = RowWriter(f)
        assert rw.direct_tokens
        rw.write_tokens(bs[2].start, bs[2].tokens)  # tokens ahead of their commit (as the image stage does)
        bs[2].tokens = None
        assert rw.commit(bs) == 7 and int(f.attrs["n_written"]) == 7
    with h5py.File(path, "r") as f:
        w = f["written"][...]
        assert w.tolist() == [True] * 5 + [False, False, True, True, False]
        for b in bs:
            np.testing.assert_array_equal(f["image_features"][b.start:b.stop], b.cls)
            names = [L.CODE_SPLITS[int(c)].encode() for c in b.source_split]
            assert f["split"][b.start:b.stop].tolist() == names
        rng = np.random.default_rng(0)
        for a, b in ((0, 3), (3, 5), (7, 9)):
            np.testing.assert_array_equal(f["image_token_features"][a:b], _batch(a, b, rng).tokens)
        assert np.isnan(f["image_token_features"][5]).all() and int(f["ids"][5]) == -1


def test_commit_counts_rows_once(tmp_path: Path) -> None:
    path = tmp_path / "p.h5"
    _file(path)
    rng = np.random.default_rng(1)
    with h5py.File(path, "r+") as f:
        rw = RowWriter(f)
        assert rw.commit(_batch(0, 4, rng)) == 4
        assert rw.commit(_batch(2, 6, rng)) == 6  # rows 2,3 again: not counted twice
    with h5py.File(path, "r+") as f:
        assert RowWriter(f).n_written == 6  # a new writer reads the mask back


def test_filtered_dataset_falls_back_to_plain_writes(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "g.h5", "w") as f:
        ds = f.create_dataset("x", shape=(4, T, D), dtype=np.float16, chunks=(1, T, D), compression="gzip")
        assert not direct_chunk_ok(ds)
        assert not direct_chunk_ok(f.create_dataset("y", shape=(4, T, D), dtype=np.float16, chunks=(2, T, D)))
        assert direct_chunk_ok(f.create_dataset("z", shape=(4, T, D), dtype=np.float16, chunks=(1, T, D)))
        create_row_datasets(f.create_group("rows"), N, D, T, "float32", True)
        g = f["rows"]
        del g[L.IMAGE_TOKENS]
        g.create_dataset(L.IMAGE_TOKENS, shape=(N, T, D), dtype=np.float16, chunks=(1, T, D), compression="gzip")
        rw = RowWriter(g)  # type: ignore[arg-type]
        assert not rw.direct_tokens
        b = _batch(2, 5, np.random.default_rng(2))
        rw.write_tokens(b.start, b.tokens)
        np.testing.assert_array_equal(g[L.IMAGE_TOKENS][2:5], b.tokens)


def test_merge_adjacent_joins_only_neighbours() -> None:
    rng = np.random.default_rng(3)
    runs = merge_adjacent([_batch(3, 5, rng, False), _batch(0, 3, rng, False), _batch(6, 8, rng, False)])
    assert [(r.start, r.stop) for r in runs] == [(0, 5), (6, 8)]
    assert runs[0].ids.tolist() == [0, 1, 2, 3, 4] and runs[0].image_hash.shape == (5, L.IMAGE_HASH_BYTES)


def test_commit_groups_give_the_same_store_and_progress_gets_the_total(tmp_path: Path) -> None:
    sizes = {"train": 5, "val": 2, "test": 3}
    seen: dict[str, list[int]] = {"total": [], "advance": []}

    @contextlib.contextmanager
    def progress(total: int | None) -> Iterator:
        seen["total"].append(total)
        yield seen["advance"].append

    a = run_image_stage(FakeSource(sizes), FakeBackend(), ImageOptions(h5=tmp_path / "a.h5", layout="single",
                                                                         batch_size=3), progress=progress)
    assert seen["total"] == [10] and sum(seen["advance"]) == 10 and len(seen["advance"]) == 1  # one group
    b = run_image_stage(FakeSource(sizes), FakeBackend(), ImageOptions(h5=tmp_path / "b.h5", layout="single",
                                                                         batch_size=3, commit_rows=1))
    assert a.complete and b.complete
    ra, rb = read_rows(tmp_path / "a.h5"), read_rows(tmp_path / "b.h5")
    for k in ra:
        np.testing.assert_array_equal(ra[k], rb[k])
    seen["total"].clear()
    run_image_stage(FakeSource(sizes), FakeBackend(), ImageOptions(h5=tmp_path / "a.h5", layout="single"),
                    progress=progress)
    assert seen["total"] == []  # nothing to do: no bar


def test_image_hash_is_blake2b_128_of_the_hwc_bytes_also_for_views() -> None:
    import hashlib

    img = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    for a in (img, img[:, ::-1], img.transpose(1, 0, 2)):  # contiguous, then two non-contiguous views
        want = hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest()
        assert L.image_hash(a).tobytes() == want
