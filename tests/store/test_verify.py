"""`db verify` (store.md §8): good stores pass; each broken rule is reported under its check number."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.store.test_reader_fixtures import build_store
from xaiclip_cli.errors import UsageError
from xaiclip_cli.store.verify import verify_store


def checks(rep: object) -> set[int]:
    return {i.check for i in rep.errors}  # type: ignore[attr-defined]


@pytest.mark.parametrize("kwargs", [
    {"layout": "single"}, {"layout": "sharded"}, {"layout": "single", "n_written": 7},
    {"layout": "sharded", "partial_part": 2}, {"layout": "single", "tokens": False},
])
def test_good_stores_pass(tmp_path: Path, kwargs: dict) -> None:
    tr = build_store(tmp_path / "s.h5", **kwargs)
    rep = verify_store(tr.path, full=True)
    assert rep.ok, [i.message for i in rep.errors]
    assert rep.complete == bool(tr.written.all())
    assert rep.checked["n_written"] == int(tr.written.sum())
    if tr.written.all():
        assert not rep.warnings
    else:
        assert [w.check for w in rep.warnings] == [3]
        assert checks(verify_store(tr.path, require_complete=True)) == {3}


def _attr(name: str, value: object) -> Callable[[h5py.File], None]:
    def go(f: h5py.File) -> None:
        f.attrs[name] = value
    return go


def _set(path: str, index: object, value: object) -> Callable[[h5py.File], None]:
    def go(f: h5py.File) -> None:
        f[path][index] = value
    return go


def _del_attr(name: str) -> Callable[[h5py.File], None]:
    def go(f: h5py.File) -> None:
        del f.attrs[name]
    return go


def _bad_norm(f: h5py.File) -> None:
    f["image_features"][2] = f["image_features"][2] * 1.01


def _k_mismatch(f: h5py.File) -> None:
    f["templates/label_prompts_t01"].attrs["K"] = 5


def _hash(f: h5py.File) -> None:
    f["templates/concept_prompts_t01"].attrs["texts_hash"] = "0" * 64


def _mask(f: h5py.File) -> None:
    f["templates/concept_prompts_t02/lengths"][0] = 1


def _bad_group(f: h5py.File) -> None:
    f["templates"].create_group("my_prompts")


@pytest.mark.parametrize(("mutate", "expected"), [
    (_del_attr("concept_logit_scale"), 1),
    (_attr("label_texts", "[not json"), 1),
    (_attr("big", "x" * 70000), 1),
    (_k_mismatch, 2),
    (_attr("T_img", 7), 2),
    (_bad_group, 2),
    (_attr("n_written", 3), 3),
    (_attr("split_counts", json.dumps({"train": 6, "val": 3})), 3),
    (_set("ids", 4, 40), 4),
    (_set("source_split", 1, 2), 4),
    (_set("labels", 0, 9), 4),
    (_set("source_index", 2, 1), 4),
    (_set("image_features", 3, np.full(8, np.nan, np.float32)), 5),
    (_bad_norm, 5),
    (_set("image_token_features", (11, 2, 3), np.inf), 5),
    (_hash, 7),
    (_mask, 7),
], ids=lambda v: getattr(v, "__name__", str(v)))
def test_each_broken_rule_is_found(tmp_path: Path, mutate: Callable[[h5py.File], None], expected: int) -> None:
    tr = build_store(tmp_path / "s.h5")
    with h5py.File(tr.path, "a") as f:
        mutate(f)
    rep = verify_store(tr.path, full=True)
    assert not rep.ok and expected in checks(rep), [(i.check, i.message) for i in rep.issues]


def test_unwritten_placeholders_checked(tmp_path: Path) -> None:
    tr = build_store(tmp_path / "s.h5", n_written=10)
    with h5py.File(tr.path, "a") as f:
        f["image_features"][12] = np.ones(8, np.float32)
        f["split"][13] = "test"
    rep = verify_store(tr.path)
    msgs = [i.message for i in rep.errors if i.check == 4]
    assert any("unwritten rows hold CLS values" in m and "12" in m for m in msgs)
    assert any("placeholders" in m and "13" in m for m in msgs)


def test_tokens_checked_on_256_rows_or_all_with_full(tmp_path: Path) -> None:
    tr = build_store(tmp_path / "s.h5", split_sizes=(300, 0, 0), d=4, t=2, part_rows=64)
    with h5py.File(tr.path, "a") as f:
        f["image_token_features"][7] = np.nan
    assert verify_store(tr.path, full=True).checked["token_rows"] == 300
    sampled = verify_store(tr.path)
    assert sampled.checked["token_rows"] == 256
    assert checks(verify_store(tr.path, full=True)) == {5}


def test_sharded_parts(tmp_path: Path) -> None:
    tr = build_store(tmp_path / "s.h5", layout="sharded")
    with h5py.File(tr.parts[0], "a") as p:
        p.attrs["fingerprint"] = "e" * 64
    with h5py.File(tr.parts[2], "a") as p:
        p.attrs["complete"] = False
    tr.parts[1].unlink()
    rep = verify_store(tr.path)
    msgs = [i.message for i in rep.errors if i.check == 6]
    assert any("part-00000.h5: fingerprint differs" in m for m in msgs)
    assert any("part-00001.h5 (rows 4-7) holds written rows but is missing" in m for m in msgs)
    assert any("part-00002.h5 is not marked complete" in m for m in msgs)
    assert rep.checked["parts"] == 4 and rep.checked["parts_present"] == 3
    # Missing rows are not reported again as NaN features.
    assert 5 not in checks(rep)


def test_unopenable_and_missing(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        verify_store(tmp_path / "none.h5")
    (tmp_path / "x.h5").write_bytes(b"garbage")
    rep = verify_store(tmp_path / "x.h5")
    assert checks(rep) == {1} and "not an HDF5 file" in rep.errors[0].message


def _seed_image_only_store(path: Path, n: int = 6, d: int = 8, t: int = 4) -> Path:
    """What the seed's feature_extraction.py leaves before its text stage: features, columns, 6 root attrs."""
    rng = np.random.default_rng(3)
    cls = rng.normal(size=(n, d)).astype(np.float32)
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image_features", data=cls.astype(np.float16))
        f.create_dataset("image_token_features", data=rng.normal(size=(n, t, d)).astype(np.float16),
                         chunks=(4, t, d), compression="lzf")
        f["ids"] = np.arange(n, dtype=np.int64)
        f["labels"] = rng.integers(0, 3, n).astype(np.int64)
        f.create_dataset("split", data=np.array(["train"] * 4 + ["val", "test"], dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        f.create_group("templates")
        f.attrs.update({"D": d, "T_img": t, "created_at": "2025-01-01 00:00:00", "version": "1.0",
                        "split_counts": json.dumps({"train": 4, "val": 1, "test": 1}),
                        "dataset": json.dumps("bloodmnist")})
    return path


def test_seed_store_without_text_stage_is_a_valid_image_store(tmp_path: Path) -> None:
    rep = verify_store(_seed_image_only_store(tmp_path / "seed.h5"), require_complete=True, full=True)
    assert rep.ok, [i.message for i in rep.errors]
    notes = [i.message for i in rep.issues if i.level == "note"]
    assert any(m.startswith("image-only store: no text stage yet") and "logit_scale" in m for m in notes), notes
    assert rep.checked["storage"] == "self-contained"


def test_text_attrs_are_still_required_once_templates_exist(tmp_path: Path) -> None:
    h5 = _seed_image_only_store(tmp_path / "seed.h5")
    with h5py.File(h5, "r+") as f:
        g = f["templates"].create_group("label_prompts_t01")
        g["text_features"] = np.eye(3, 8, dtype=np.float32)
        g.create_dataset("texts", data=np.array(["a", "b", "c"], dtype=object), dtype=h5py.string_dtype("utf-8"))
        g.attrs.update({"K": 3, "D": 8, "T_txt": -1, "texts_hash": "x", "created_at": "2025-01-01 00:00:00"})
    rep = verify_store(h5)
    missing = sorted(i.message for i in rep.errors if i.message.startswith("missing root attribute"))
    assert len(missing) == 8 and "missing root attribute 'logit_scale'" in missing
