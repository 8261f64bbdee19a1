"""StoreReader against stores built from the spec: values, order, VDS parts, incomplete stores, bad files, fork."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.store.test_reader_fixtures import CONCEPTS, Truth, build_store
from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.store.reader import StoreReader, parse_idx, read_rows, runs


@pytest.fixture(params=["single", "sharded"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Truth:
    return build_store(tmp_path / "store.h5", layout=request.param)


def test_sample_values(store: Truth) -> None:
    with StoreReader(store.path) as r:
        for i in (0, 5, 13, -1):
            s = r.sample(i)
            j = i % store.n
            assert (s.index, s.id, s.label, s.split) == (j, j, int(store.labels[j]), store.split[j])
            np.testing.assert_array_equal(s.image_feature, store.cls[j])
            np.testing.assert_array_equal(s.image_token_feature, store.tokens[j])
            assert s.image_feature.dtype == np.float32 and s.image_token_feature.dtype == np.float16


def test_batch_positions_within_split_in_user_order(store: Truth) -> None:
    test_rows = store.split_rows("test")
    with StoreReader(store.path) as r:
        rows, cls = r.batch("test", [3, 0, 2, 0], "image")
        np.testing.assert_array_equal(rows, test_rows[[3, 0, 2, 0]])
        np.testing.assert_array_equal(cls, store.cls[test_rows[[3, 0, 2, 0]]])
        rows, tok = r.batch("TRAIN", slice(1, None, 2), "patches")
        np.testing.assert_array_equal(tok, store.tokens[store.split_rows("train")[1::2]])
        rows, lab = r.batch("val", range(3), "label")
        np.testing.assert_array_equal(lab, store.labels[store.split_rows("val")])
        rows, cls = r.batch("all", None, "image")
        np.testing.assert_array_equal(cls, store.cls)


def test_batch_errors(store: Truth) -> None:
    with StoreReader(store.path) as r:
        with pytest.raises(UsageError, match=r"position 3 out of range for split 'val' \(3 written rows"):
            r.batch("val", [0, 3])
        with pytest.raises(UsageError, match="more than --max-rows 4"):
            r.batch("train", None, "patches", max_rows=4)
        with pytest.raises(UsageError, match="--split must be one of"):
            r.batch("holdout", None)
        with pytest.raises(UsageError, match="out of range: the store has 14 rows"):
            r.sample(14)


def test_read_rows_runs_and_reorder(tmp_path: Path) -> None:
    data = np.arange(200 * 3, dtype=np.float32).reshape(200, 3)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["d"] = data
    assert runs(np.array([1, 2, 3, 7, 9, 10])) == [(1, 4, 0, 3), (7, 8, 3, 4), (9, 11, 4, 6)]
    rng = np.random.default_rng(1)
    with h5py.File(tmp_path / "x.h5", "r") as f:
        for rows in ([5], [9, 2, 2, 7], list(range(0, 200, 2))[::-1], rng.integers(0, 200, 300).tolist(), []):
            np.testing.assert_array_equal(read_rows(f["d"], rows), data[np.asarray(rows, dtype=int)])


def test_parse_idx() -> None:
    assert parse_idx("3,1,2") == [3, 1, 2]
    assert parse_idx("0:10:2") == slice(0, 10, 2)
    assert parse_idx(":5") == slice(None, 5, None)
    assert parse_idx(None) is None
    with pytest.raises(UsageError, match="--idx must be positions"):
        parse_idx("a,b")


def test_templates_and_fetch(store: Truth) -> None:
    with StoreReader(store.path) as r:
        assert r.template_names() == ["concept_prompts_t01", "concept_prompts_t02", "label_prompts_t01"]
        assert r.template_names("label") == ["label_prompts_t01"]
        info = r.template_info("concept_prompts_t02")
        assert (info["K"], info["T_txt"], info["first_text"]) == (4, 5, "blood cell with Segmented nucleus")
        got = r.fetch(None, "concept", [CONCEPTS[3], CONCEPTS[1]], "text")
        assert list(got) == ["concept_prompts_t01", "concept_prompts_t02"]
        want = store.templates["concept_prompts_t02"]["text"][[3, 1]]
        np.testing.assert_array_equal(got["concept_prompts_t02"], want)
        tok = r.fetch(["label_prompts_t01"], None, None, "tokens")
        np.testing.assert_array_equal(tok["label_prompts_t01"], store.templates["label_prompts_t01"]["tokens"])
        with pytest.raises(UsageError, match="unknown concept 'Round nucleus'"):
            r.fetch(None, "concept", ["Round nucleus"])
        with pytest.raises(UsageError, match="unknown template 'concept_prompts_t09'"):
            r.fetch(["concept_prompts_t09"])
        with pytest.raises(UsageError, match="concept templates only"):
            r.fetch(["label_prompts_t01"], None, [CONCEPTS[0]])


def test_summarize_and_tree(store: Truth) -> None:
    with StoreReader(store.path) as r:
        s = r.summarize(max_templates=2)
        assert s["image_features"] == [14, 8] and s["ids_preview"] == [0, 1, 2, 3, 4]
        assert s["split_counts"] == {"train": 6, "val": 3, "test": 5}
        assert s["templates"] == ["concept_prompts_t01", "concept_prompts_t02", "..."]
        assert s["completeness"]["complete"] and s["provenance"]["model_id"] == "toy-vit"
        t = r.tree(max_templates=1)
        assert t["attrs"][:3] == ["D", "T_img", "created_at"] and t["attrs"][-1] == "..."
        assert len([a for a in t["attrs"] if a != "..."]) == 13 and "dataset" in t["other_attrs"]
        by = {d["path"]: d for d in t["datasets"]}
        assert by["split"]["dtype"] == "vlen str"
        assert by["image_token_features"]["shape"] == [14, 6, 8]
        assert by["image_features"]["virtual"] == (store.parts != [])
        assert t["templates"][0]["attrs"] == ["K", "D", "T_txt", "texts_hash", "created_at", "..."]


def test_incomplete_store_returns_written_prefix(tmp_path: Path) -> None:
    tr = build_store(tmp_path / "s.h5", n_written=8)
    with StoreReader(tr.path) as r:
        rows, cls = r.batch("all", None, "image")
        np.testing.assert_array_equal(rows, np.arange(8))
        assert not np.isnan(cls).any()
        assert r.batch("test", None, "label")[0].size == 0
        with pytest.raises(XaiclipError, match=r"row 9 is not written yet .* 8/14 rows written"):
            r.sample(9)
        c = r.completeness()
        assert (c["n_written"], c["complete"], c["written_per_split"]["val"]) == (8, False, 2)


def test_sharded_missing_part_is_named(tmp_path: Path) -> None:
    tr = build_store(tmp_path / "s.h5", layout="sharded")
    tr.parts[1].unlink()
    with StoreReader(tr.path) as r:
        np.testing.assert_array_equal(r.sample(3).image_feature, tr.cls[3])
        with pytest.raises(XaiclipError, match=r"part file .*part-00001\.h5 \(rows 4-7\) is missing"):
            r.sample(5)
        with pytest.raises(XaiclipError, match=r"part-00001\.h5"):
            r.batch("train", [0, 4], "image")
        assert r.completeness()["missing_parts"] == [str(tr.parts[1].resolve())]


def test_sharded_partial_part_reads_consistent_prefix(tmp_path: Path) -> None:
    tr = build_store(tmp_path / "s.h5", layout="sharded", partial_part=2)
    with StoreReader(tr.path) as r:
        rows, tok = r.batch("all", None, "patches", max_rows=100)
        np.testing.assert_array_equal(rows, np.r_[0:8, 12:14])
        np.testing.assert_array_equal(tok, tr.tokens[rows])
        with pytest.raises(XaiclipError, match="row 9 is not written yet"):
            r.sample(9)


def test_reopens_after_pid_change(store: Truth, monkeypatch: pytest.MonkeyPatch) -> None:
    r = StoreReader(store.path)
    first = r.handle
    assert r.handle is first
    real = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: real + 1)
    assert r.handle is not first and r.handle.pid == real + 1
    np.testing.assert_array_equal(r.sample(2).image_feature, store.cls[2])
    monkeypatch.undo()
    first.file.close()
    r.close()


def _child_read(reader: StoreReader, q: mp.Queue) -> None:
    h = reader._h
    s = reader.sample(4)
    q.put((h is not None and reader._h is not h, s.image_feature.tolist()))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_forked_child_never_uses_inherited_handle(store: Truth) -> None:
    r = StoreReader(store.path)
    r.sample(0)  # parent opens
    q: mp.Queue = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=_child_read, args=(r, q))
    p.start()
    reopened, vals = q.get(timeout=30)
    p.join(30)
    assert reopened and np.allclose(vals, store.cls[4])
    np.testing.assert_array_equal(r.sample(4).image_feature, store.cls[4])  # parent handle still fine
    r.close()


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="store not found"):
        StoreReader(tmp_path / "nope.h5").sample(0)
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(XaiclipError, match="not an HDF5 file"):
        StoreReader(tmp_path / "text.h5").sample(0)
    tr = build_store(tmp_path / "s.h5")
    data = tr.path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(XaiclipError, match="truncated"):
        StoreReader(tmp_path / "cut.h5").sample(0)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["weights"] = np.zeros(3)
    with pytest.raises(UsageError, match="not a feature store"):
        StoreReader(tmp_path / "other.h5").sample(0)
    with h5py.File(tmp_path / "v2.h5", "w") as f:
        f.attrs["schema_version"] = "xaiclip-store/2"
    with pytest.raises(UsageError, match="store schema 'xaiclip-store/2'"):
        StoreReader(tmp_path / "v2.h5").sample(0)


@pytest.mark.skipif(os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE", reason="file locking off")
def test_store_open_for_writing_gives_clear_error(tmp_path: Path) -> None:
    tr = build_store(tmp_path / "s.h5")
    code = textwrap.dedent(f"""
        import sys, time, h5py
        f = h5py.File({str(tr.path)!r}, "r+")
        f["ids"][0] = 0
        print("ready", flush=True)
        sys.stdin.readline()
        f.close()
    """)
    w = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert w.stdout is not None and w.stdout.readline().strip() == "ready"
        with pytest.raises(XaiclipError, match="open for writing by another process"):
            StoreReader(tr.path).sample(0)
    finally:
        assert w.stdin is not None
        w.stdin.write("\n")
        w.stdin.close()
        w.wait(30)
    np.testing.assert_array_equal(StoreReader(tr.path).sample(0).image_feature, tr.cls[0])


def test_written_row_reading_as_fill_is_refused(tmp_path: Path) -> None:
    tr = build_store(tmp_path / "s.h5")
    with h5py.File(tr.path, "a") as f:  # as if the writer had set `written` before the features landed
        f["image_features"][6] = np.nan
        f["image_token_features"][2] = np.nan
    with StoreReader(tr.path) as r:
        with pytest.raises(XaiclipError, match="row 6 of image_features reads as fill"):
            r.sample(6)
        with pytest.raises(XaiclipError, match="row 2 of image_token_features reads as fill"):
            r.batch("train", [0, 2], "patches")
        np.testing.assert_array_equal(r.batch("train", [0, 1], "patches")[1], tr.tokens[[0, 1]])


def test_raw_hdf5_read_error_inside_a_reader_block_is_one_named_line(tmp_path) -> None:
    import pytest

    from xaiclip_cli.errors import XaiclipError
    from xaiclip_cli.store.reader import StoreReader

    rd = StoreReader(tmp_path / "lib.h5")
    with pytest.raises(XaiclipError) as e, rd:
        raise OSError("Can't synchronously read data (addr overflow, addr = 28392)\nmore")
    assert str(e.value).startswith(f"cannot read store {tmp_path / 'lib.h5'} (Can't synchronously read data")
    assert "\n" not in str(e.value)
