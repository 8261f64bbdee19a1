"""store image (library): exact values against an oracle, seed view, resume, refusal, faults, layouts."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.store.fakes import FakeBackend, FakeSource, expected_features, fake_image, read_rows
from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.store import layout as L
from xaiclip_cli.store import writer as W
from xaiclip_cli.store.image import ImageOptions, run_image_stage

SIZES = {"train": 5, "val": 2, "test": 3}
SPLIT_OF_ROW = ["train"] * 5 + ["val"] * 2 + ["test"] * 3
INDEX_OF_ROW = [0, 1, 2, 3, 4, 0, 1, 0, 1, 2]


def _run(h5: Path, **kw) -> object:
    backend = kw.pop("backend", None) or FakeBackend()
    source = kw.pop("source", None)
    source = FakeSource(SIZES) if source is None else source
    opts = ImageOptions(h5=h5, part_rows=kw.pop("part_rows", 4), batch_size=kw.pop("batch_size", 3), **kw)
    return run_image_stage(source, backend, opts)


@pytest.mark.parametrize("layout", ["sharded", "single", "kept-parts"])
def test_values_match_oracle_and_seed_view(tmp_path: Path, layout: str) -> None:
    h5 = tmp_path / "s.h5"
    res = _run(h5, layout="single" if layout == "single" else "sharded", materialize=layout != "kept-parts")
    assert res.rows_written == 10 and res.complete and res.rows_done == 10
    # A finished single-process run is one self-contained file whatever the layout it was written with.
    assert res.layout == ("sharded" if layout == "kept-parts" else "single")
    with h5py.File(h5, "r") as f:  # the seed's plain open and access pattern (§1.1)
        for i in range(10):
            img = fake_image(SPLIT_OF_ROW[i], INDEX_OF_ROW[i])
            cls, tok = expected_features(img)
            np.testing.assert_allclose(f["image_features"][i], cls, rtol=0, atol=1e-6)
            np.testing.assert_allclose(f["image_token_features"][i], tok.astype(np.float16), rtol=0, atol=0)
            assert int(f["ids"][i]) == i
            assert int(f["labels"][i]) == INDEX_OF_ROW[i] % 3
            s = f["split"][i]
            assert (s.decode("utf-8") if isinstance(s, bytes) else str(s)) == SPLIT_OF_ROW[i]
            assert f["image_hash"][i].tobytes() == hashlib.blake2b(img.tobytes(), digest_size=16).digest()
            assert int(f["source_index"][i]) == INDEX_OF_ROW[i]
            assert int(f["source_split"][i]) == L.SPLIT_CODES[SPLIT_OF_ROW[i]]
        assert f["image_token_features"].dtype == np.float16 and f["image_features"].dtype == np.float32
        if layout != "kept-parts":
            assert f["image_token_features"].chunks == (1, 4, 6) and not f["image_features"].is_virtual
            assert f.attrs["layout"] == "single" and not L.parts_dir(h5).exists()
        assert json.loads(f.attrs.get("split_counts", "{}")) == SIZES
        splits = [x.decode("utf-8") for x in f["split"][...]]
        val_rows = [i for i, s in enumerate(splits) if s == "val"]
        np.testing.assert_array_equal(f["labels"][val_rows], [0, 1])
        assert sorted(f["templates"].keys()) == []
        for name in L.SEED_ROOT_ATTRS:
            assert name in f.attrs, name
        assert f.attrs["schema_version"] == L.SCHEMA_VERSION and f.attrs["version"] == "1.0"
        assert float(f.attrs["logit_scale"]) == 4.5 and abs(float(f.attrs["logit_scale_exp"]) - np.exp(4.5)) < 1e-9
        assert json.loads(f.attrs["dataset"]) == "fake"
        assert int(f.attrs["n_written"]) == 10 and int(f.attrs["T_img"]) == 4 and int(f.attrs["D"]) == 6
        assert L.Plan.from_json(f["meta/plan"][()].decode()).split_sizes == SIZES
        if layout == "kept-parts":
            assert f["image_features"].is_virtual and not f["ids"].is_virtual
            assert {s.file_name for s in f["image_features"].virtual_sources()} == {
                f"s.parts/part-0000{k}.h5" for k in range(3)}
    if layout == "kept-parts":
        assert sorted(p.name for p in (tmp_path / "s.parts").iterdir()) == [f"part-0000{k}.h5" for k in range(3)]
        with h5py.File(tmp_path / "s.parts/part-00001.h5", "r") as p:
            assert (int(p.attrs["row_start"]), int(p.attrs["row_stop"])) == (4, 8)
            assert bool(p.attrs["complete"]) and int(p.attrs["n_written"]) == 4
            assert p["image_token_features"].chunks == (1, 4, 6) and p["image_features"].chunks == (4, 6)
            assert p.attrs["fingerprint"] == h5py.File(h5, "r").attrs["fingerprint"]


def test_sharded_store_moves_as_a_folder(tmp_path: Path) -> None:
    _run(tmp_path / "a" / "s.h5")
    ref = read_rows(tmp_path / "a" / "s.h5")
    shutil.move(tmp_path / "a", tmp_path / "b")
    got = read_rows(tmp_path / "b" / "s.h5")  # relative VDS sources resolve beside the index
    np.testing.assert_array_equal(got["image_token_features"], ref["image_token_features"])
    assert not np.isnan(got["image_features"]).any()


def test_complete_store_is_a_noop(tmp_path: Path) -> None:
    h5 = tmp_path / "s.h5"
    _run(h5)
    before = read_rows(h5)
    be = FakeBackend()
    res = _run(h5, backend=be)
    assert res.rows_written == 0 and res.rows_skipped == 10 and res.complete
    assert be.calls == 1  # only the probe of the model's shapes
    after = read_rows(h5)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def _fail_after(monkeypatch: pytest.MonkeyPatch, n_ok: int) -> None:
    real = W.RowWriter.write_columns
    calls = {"n": 0}

    def flaky(self, batch, names):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, batch, names)

    monkeypatch.setattr(W.RowWriter, "write_columns", flaky)


@pytest.mark.parametrize("layout", ["sharded", "single"])
def test_disk_full_leaves_a_valid_resumable_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  layout: str) -> None:
    ref = tmp_path / "ref.h5"
    _run(ref, layout=layout)
    h5 = tmp_path / "s.h5"
    with monkeypatch.context() as m:
        _fail_after(m, 2)
        with pytest.raises(XaiclipError, match="No space left|resumable") as ei:
            _run(h5, layout=layout, commit_rows=1)  # commit every batch: two commits succeed, the third fails
        assert ei.value.exit_code == 1
    rows = read_rows(h5)  # still opens; committed rows are consistent
    w = rows["written"]
    assert 0 < w.sum() < 10 and int(rows["n_written"]) == w.sum()
    assert (rows["ids"][~w] == -1).all() and (rows["labels"][~w] == -1).all()
    assert all(s in (b"", "") for s in rows["split"][~w])
    assert np.isnan(rows["image_features"][~w]).all()
    assert (rows["ids"][w] == np.nonzero(w)[0]).all()
    res = _run(h5, layout=layout)
    assert res.rows_skipped == int(w.sum()) and res.rows_written == 10 - int(w.sum()) and res.complete
    a, b = read_rows(ref), read_rows(h5)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_other_model_or_dtype_is_refused_unless_overwrite(tmp_path: Path) -> None:
    h5 = tmp_path / "s.h5"
    _run(h5, materialize=False)  # a linked store keeps its part size
    with pytest.raises(UsageError, match="pass --overwrite") as ei:
        _run(h5, backend=FakeBackend(revision="r2"))
    assert ei.value.exit_code == 2
    with pytest.raises(UsageError, match="cls float32"):
        _run(h5, cls_dtype="float16")
    with pytest.raises(UsageError, match="splits"):
        _run(h5, source=FakeSource({"train": 6, "val": 2, "test": 3}))
    with pytest.raises(UsageError, match="part-rows"):
        _run(h5, part_rows=5)
    res = _run(h5, backend=FakeBackend(revision="r2"), overwrite=True, cls_dtype="float16")
    assert res.rows_written == 10
    with h5py.File(h5, "r") as f:
        assert f.attrs["model_revision"] == "r2" and f["image_features"].dtype == np.float16


def test_foreign_file_is_refused(tmp_path: Path) -> None:
    h5 = tmp_path / "seed.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("image_features", data=np.zeros((2, 6), np.float16))
    with pytest.raises(UsageError, match="not an xaiclip store"):
        _run(h5)


def test_no_tokens_and_fp16_cls(tmp_path: Path) -> None:
    h5 = tmp_path / "s.h5"
    _run(h5, tokens=False, cls_dtype="float16")
    with h5py.File(h5, "r") as f:
        assert "image_token_features" not in f and f["image_features"].dtype == np.float16
        assert not bool(f.attrs["has_tokens"]) and int(f.attrs["T_img"]) == -1
        cls, _ = expected_features(fake_image("train", 0))
        np.testing.assert_allclose(f["image_features"][0], cls, atol=2e-3)


def test_space_check_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import xaiclip_cli.store.image as image_mod

    monkeypatch.setattr(image_mod.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 100))
    with pytest.raises(XaiclipError, match="not enough disk space"):
        _run(tmp_path / "s.h5")
    assert _run(tmp_path / "t.h5", space_check=False).complete


def test_damaged_partial_part_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h5 = tmp_path / "s.h5"
    with monkeypatch.context() as m:
        _fail_after(m, 1)  # part 0: batch [0,3) committed, [3,4) failed
        with pytest.raises(XaiclipError):
            _run(h5, commit_rows=1)
    partial = L.part_path(h5, 0, partial=True)
    assert partial.exists()
    partial.write_bytes(b"garbage")  # as if killed while HDF5 metadata was half written
    res = _run(h5)
    assert res.complete and res.rows_written == 10
    ref = tmp_path / "ref.h5"
    _run(ref)
    np.testing.assert_array_equal(read_rows(h5)["image_features"], read_rows(ref)["image_features"])


def test_check_source_detects_changed_images(tmp_path: Path) -> None:
    h5 = tmp_path / "s.h5"
    _run(h5)
    assert _run(h5, check_source=True).complete
    with pytest.raises(XaiclipError, match="no longer match"):
        _run(h5, check_source=True, source=FakeSource(SIZES, salt=1))


def test_empty_dataset_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no images"):
        _run(tmp_path / "s.h5", source=FakeSource({"train": 0}))
