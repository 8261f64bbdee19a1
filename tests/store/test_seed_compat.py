"""Seed compatibility: read stores exactly the way the seed's database_access.py does (store.md §1.1)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.store.test_reader_fixtures import CONCEPTS, LABELS, Truth, build_store
from xaiclip_cli.store.reader import StoreReader


@pytest.fixture(params=["single", "sharded"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Truth:
    return build_store(tmp_path / "store.h5", layout=request.param)


def _to_str_array(arr: np.ndarray) -> np.ndarray:
    return np.array([x.decode("utf-8") if isinstance(x, (bytes, bytearray)) else str(x) for x in arr])


def test_seed_sample(store: Truth) -> None:
    with h5py.File(store.path, "r") as f:
        for index in (0, 7, 13):
            img_feat = f["image_features"][index]
            img_tokens = f["image_token_features"][index]
            sample_id = int(f["ids"][index])
            label = int(f["labels"][index])
            split_raw = f["split"][index]
            split_name = split_raw.decode("utf-8") if isinstance(split_raw, (bytes, bytearray)) else str(split_raw)
            np.testing.assert_array_equal(img_feat, store.cls[index])
            np.testing.assert_array_equal(img_tokens, store.tokens[index])
            assert (sample_id, label, split_name) == (index, int(store.labels[index]), store.split[index])


@pytest.mark.parametrize(("split", "idx", "feature"), [
    ("test", [0, 2, 4], "image"), ("train", slice(1, 4), "patches"), ("val", None, "label"), ("all", [13], "image"),
])
def test_seed_batch(store: Truth, split: str, idx: object, feature: str) -> None:
    key = {"image": "image_features", "patches": "image_token_features", "label": "labels"}[feature]
    with h5py.File(store.path, "r") as f:
        total = f[key].shape[0]
        if split == "all":
            indices = np.arange(total, dtype=np.int64)
        else:
            split_arr = _to_str_array(f["split"][:])
            indices = np.flatnonzero(split_arr == split).astype(np.int64)
        if idx is None:
            selected = indices
        elif isinstance(idx, slice):
            selected = indices[idx]
        else:
            selected = indices[np.asarray(idx, dtype=np.int64)]
        seed_result = np.asarray(f[key][selected])
    truth = {"image": store.cls, "patches": store.tokens, "label": store.labels}[feature]
    np.testing.assert_array_equal(seed_result, truth[selected])
    # Our reader gives the same answer for the same request on a complete store.
    with StoreReader(store.path) as r:
        np.testing.assert_array_equal(r.batch(split, idx, feature, max_rows=100)[1], seed_result)


def test_seed_summarize_templates_fetch_scalars(store: Truth) -> None:
    with h5py.File(store.path, "r") as f:
        assert f["image_features"].shape == (14, 8)
        np.testing.assert_array_equal(f["ids"][:5], np.arange(5))
        assert json.loads(f.attrs.get("split_counts", "{}")) == {"train": 6, "val": 3, "test": 5}
        names = sorted(f["templates"].keys())
        assert [n for n in names if n.startswith("concept")] == ["concept_prompts_t01", "concept_prompts_t02"]
        assert [n for n in names if n.startswith("label")] == ["label_prompts_t01"]
        raw = f.attrs["concept_texts"]
        raw = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        base = json.loads(raw)
        positions = {str(n): i for i, n in enumerate(base)}
        keep = np.asarray([positions[c] for c in [CONCEPTS[2], CONCEPTS[0]]], dtype=np.int64)
        arr = np.asarray(f["templates"]["concept_prompts_t01"]["text_features"][:])[keep]
        np.testing.assert_array_equal(arr, store.templates["concept_prompts_t01"]["text"][[2, 0]])
        tok = np.asarray(f["templates"]["label_prompts_t01"]["text_token_features"][:])
        assert tok.shape == (len(LABELS), 5, 8)
        assert float(f.attrs["logit_scale"]) == pytest.approx(4.5706)
        assert float(f.attrs["concept_logit_scale"]) == pytest.approx(4.5115)
        assert int(f.attrs["D"]) == 8 and int(f.attrs["T_img"]) == 6
        assert json.loads(f.attrs["label_texts"]) == LABELS


def test_seed_clear_then_reader_still_works(store: Truth) -> None:
    with h5py.File(store.path, "a") as f:
        del f["templates"]
        f.create_group("templates")
        f.flush()
    with StoreReader(store.path) as r:
        assert r.template_names() == []
        np.testing.assert_array_equal(r.sample(3).image_feature, store.cls[3])


def test_seed_split_filter_skips_unwritten_rows(tmp_path: Path) -> None:
    tr = build_store(tmp_path / "s.h5", n_written=10)
    with h5py.File(tr.path, "r") as f:
        split_arr = _to_str_array(f["split"][:])
        rows = np.flatnonzero(split_arr == "test")
        np.testing.assert_array_equal(rows, [9])
        assert not np.isnan(f["image_features"][rows]).any()
