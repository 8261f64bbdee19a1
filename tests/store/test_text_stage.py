"""store text (library): group names and contents, texts_hash, skip/force/only/clear, orphans, refusals."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.store.fakes import FakeBackend
from xaiclip_cli.errors import UsageError
from xaiclip_cli.store import layout as L
from xaiclip_cli.store.text import PromptLists, run_text_stage

PROMPTS = PromptLists(labels=["alpha", "Beta cell"], label_templates=["a {} cell", "an image of {}"],
                      concepts=["round", "dark", "big"], concept_templates=["cell with {}"], name="mini")


def test_groups_values_and_seed_attrs(tmp_path: Path) -> None:
    h5 = tmp_path / "s.h5"
    be = FakeBackend()
    res = run_text_stage(PROMPTS, be, h5)
    assert (res.written, res.skipped, res.removed) == (3, 0, 0)
    with h5py.File(h5, "r") as f:
        assert sorted(f["templates"].keys()) == ["concept_prompts_t01", "label_prompts_t01", "label_prompts_t02"]
        g = f["templates/label_prompts_t02"]
        texts = [t.decode() for t in g["texts"][...]]
        assert texts == ["an image of alpha", "an image of Beta cell"]  # template.format(item), case kept
        ids, mask = be.tokenize(texts, max_length=16)
        feats, toks = be.encode_text(ids, mask)
        np.testing.assert_allclose(g["text_features"][...], feats.numpy(), atol=1e-6)
        np.testing.assert_allclose(g["text_token_features"][...], toks.numpy(), atol=1e-6)
        np.testing.assert_array_equal(g["attention_mask"][...], mask.numpy())
        np.testing.assert_array_equal(g["lengths"][...], mask.numpy().sum(1))
        assert g["attention_mask"].dtype == np.uint8 and g["lengths"].dtype == np.int32
        h = hashlib.sha256(b"".join(t.encode() + b"\0" for t in texts)).hexdigest()
        assert g.attrs["texts_hash"] == h == L.texts_hash(texts)
        assert (int(g.attrs["K"]), int(g.attrs["D"]), int(g.attrs["T_txt"])) == (2, 6, ids.shape[1])
        assert g.attrs["kind"] == "label" and g.attrs["template"] == "an image of {}"
        assert int(g.attrs["max_length"]) == 16
        assert json.loads(f.attrs["concept_texts"]) == ["round", "dark", "big"]
        assert json.loads(f.attrs["prompt_temp_for_labels"]) == ["a {} cell", "an image of {}"]
        assert json.loads(f["meta/label_texts"][()].decode()) == ["alpha", "Beta cell"]
        assert float(f.attrs["logit_scale"]) == 4.5 and f.attrs["schema_version"] == L.SCHEMA_VERSION
        assert int(f["templates/concept_prompts_t01"].attrs["K"]) == 3


def test_skip_force_only_orphans_clear(tmp_path: Path) -> None:
    h5 = tmp_path / "s.h5"
    run_text_stage(PROMPTS, FakeBackend(), h5)
    with h5py.File(h5, "r") as f:
        stamp = f["templates/label_prompts_t01"].attrs["created_at"]
    res = run_text_stage(PROMPTS, FakeBackend(), h5)
    assert (res.written, res.skipped) == (0, 3)
    res = run_text_stage(PROMPTS, FakeBackend(), h5, force=True, only=["label_prompts_t01"])
    assert res.written == 1 and [r.status for r in res.groups] == ["unchanged", "written", "unchanged"]
    changed = PromptLists(PROMPTS.labels, ["a {} cell"], ["round", "dark"], PROMPTS.concept_templates, "mini")
    res = run_text_stage(changed, FakeBackend(), h5)
    assert res.removed == 1 and res.written == 1  # label_prompts_t02 gone; concept group texts changed
    with h5py.File(h5, "r") as f:
        assert sorted(f["templates"].keys()) == ["concept_prompts_t01", "label_prompts_t01"]
        assert int(f["templates/concept_prompts_t01"].attrs["K"]) == 2
        assert f["templates/label_prompts_t01"].attrs["created_at"] >= stamp
    res = run_text_stage(changed, FakeBackend(), h5, clear=True)
    assert res.written == 2
    with pytest.raises(UsageError, match="--only: label_prompts_t09"):
        run_text_stage(changed, FakeBackend(), h5, only=["label_prompts_t09"])


def test_other_model_refused_then_overwrite(tmp_path: Path) -> None:
    h5 = tmp_path / "s.h5"
    run_text_stage(PROMPTS, FakeBackend(), h5)
    with pytest.raises(UsageError, match="another --h5") as ei:
        run_text_stage(PROMPTS, FakeBackend(revision="r2"), h5)
    assert ei.value.exit_code == 2
    res = run_text_stage(PROMPTS, FakeBackend(revision="r2"), h5, overwrite=True)
    assert res.written == 3


@pytest.mark.parametrize("lists, msg", [
    (PromptLists([], [], [], [], "empty"), "no label or concept prompts"),
    (PromptLists([], ["a {}"], [], [], "x"), "empty label list"),
    (PromptLists(["a"], ["no placeholder"], [], [], "x"), "placeholder"),
])
def test_bad_prompt_sets(tmp_path: Path, lists: PromptLists, msg: str) -> None:
    with pytest.raises(UsageError, match=msg):
        run_text_stage(lists, FakeBackend(), tmp_path / "s.h5")
    assert not (tmp_path / "s.h5").exists()


def test_text_then_image_share_one_store(tmp_path: Path) -> None:
    from tests.store.fakes import FakeSource
    from xaiclip_cli.store.image import ImageOptions, run_image_stage

    h5 = tmp_path / "s.h5"
    run_text_stage(PROMPTS, FakeBackend(), h5)
    run_image_stage(FakeSource(), FakeBackend(), ImageOptions(h5=h5, part_rows=4))
    run_text_stage(PROMPTS, FakeBackend(), h5)
    with h5py.File(h5, "r") as f:
        assert len(f["templates"]) == 3 and int(f.attrs["n_written"]) == 10
        assert json.loads(f.attrs["label_texts"]) == ["alpha", "Beta cell"]
    with pytest.raises(UsageError):
        run_text_stage(PROMPTS, FakeBackend(revision="zz"), h5)
