"""A store is the user's data: it keeps working after mv, a rename and a copy; a copied .h5 never reads as silent NaN.

A finished run is one self-contained file, so copying the .h5 alone works everywhere (seed readers included). A
linked store (--keep-parts) moves with its parts folder (relative links); renamed with it, xaiclip reads it at once,
`db verify` says plain readers need a relink, and `store merge` relinks it on disk.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.store.fakes import expected_features, fake_image, patch_jobs
from xaiclip_cli.cli.main import app

runner = CliRunner()
SIZES = {"train": 5, "val": 2, "test": 3}
ROWS = [("train", i) for i in range(5)] + [("val", i) for i in range(2)] + [("test", i) for i in range(3)]


@pytest.fixture(autouse=True)
def _fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_jobs(monkeypatch, sizes=SIZES)


def _write(h5: Path, *extra: str) -> None:
    r = runner.invoke(app, ["store", "image", "--h5", str(h5), "--part-rows", "4", "--batch-size", "3", "--quiet",
                            *extra])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["store", "text", "--h5", str(h5), "--prompts", "mini", "--quiet"])
    assert r.exit_code == 0, r.output


def _seed_read_every_row(h5: Path) -> None:
    """The seed's access_sample_by_index on every row with plain h5py: the exact features, no NaN anywhere."""
    with h5py.File(h5, "r") as f:
        for i, (split, idx) in enumerate(ROWS):
            cls, tok = expected_features(fake_image(split, idx))
            feat, toks = f["image_features"][i], f["image_token_features"][i]
            assert np.isfinite(feat).all() and np.isfinite(toks).all(), f"row {i} reads as fill"
            np.testing.assert_allclose(feat, cls, atol=1e-6)
            np.testing.assert_allclose(toks, tok.astype(np.float16), atol=0)
            raw = f["split"][i]
            assert (int(f["ids"][i]), int(f["labels"][i])) == (i, idx % 3)
            assert (raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)) == split


def _db_ok(h5: Path) -> dict:
    r = runner.invoke(app, ["db", "summarize", "--h5", str(h5), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["completeness"]["complete"] and doc["split_counts"] == SIZES
    r = runner.invoke(app, ["db", "sample", "9", "--h5", str(h5), "--json"])
    assert r.exit_code == 0, r.output
    assert (json.loads(r.stdout)["split"], json.loads(r.stdout)["id"]) == ("test", 9)
    r = runner.invoke(app, ["db", "verify", "--h5", str(h5), "--full", "--require-complete", "--json"])
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["ok"], doc["issues"]
    return doc


def test_finished_store_is_one_file_copied_alone_to_another_folder(tmp_path: Path) -> None:
    h5 = tmp_path / "gpu" / "s.h5"
    _write(h5)
    assert sorted(p.name for p in h5.parent.iterdir()) == ["s.h5", "s.h5.image.config.yaml", "s.h5.text.config.yaml"]
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    copy = Path(shutil.copy(h5, laptop / "features.h5"))  # the .h5 alone, under another name
    _seed_read_every_row(copy)
    doc = _db_ok(copy)
    assert doc["checked"]["storage"] == "self-contained"
    assert any(i["level"] == "note" and "self-contained" in i["message"] for i in doc["issues"])


def test_finished_store_survives_mv_rename_and_copy(tmp_path: Path) -> None:
    h5 = tmp_path / "a" / "s.h5"
    _write(h5)
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))  # mv of the folder
    moved = tmp_path / "b" / "renamed.h5"
    (tmp_path / "b" / "s.h5").rename(moved)  # a rename of the store
    copied = tmp_path / "c" / "copy.h5"
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    (tmp_path / "c" / "renamed.h5").rename(copied)
    for p in (moved, copied):
        _seed_read_every_row(p)
        _db_ok(p)
    # Resuming the renamed complete store is a no-op, not a new store.
    r = runner.invoke(app, ["store", "image", "--h5", str(moved), "--part-rows", "4", "--batch-size", "3", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["rows_written"] == 0, r.output


def test_linked_store_moves_renames_and_relinks(tmp_path: Path) -> None:
    h5 = tmp_path / "a" / "s.h5"
    _write(h5, "--keep-parts")
    assert (tmp_path / "a" / "s.parts").is_dir()
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))  # moved together with its parts folder
    _seed_read_every_row(tmp_path / "b" / "s.h5")
    assert _db_ok(tmp_path / "b" / "s.h5")["checked"]["storage"] == "linked"
    # Renamed together with its parts folder.
    new = tmp_path / "b" / "r.h5"
    (tmp_path / "b" / "s.h5").rename(new)
    (tmp_path / "b" / "s.parts").rename(tmp_path / "b" / "r.parts")
    r = runner.invoke(app, ["db", "sample", "9", "--h5", str(new), "--json"])
    assert r.exit_code == 0, r.output  # xaiclip reads it at once (relinked in memory, file untouched)
    r = runner.invoke(app, ["db", "verify", "--h5", str(new), "--json"])
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and any("store merge" in i["message"] for i in doc["issues"] if i["level"] == "error")
    r = runner.invoke(app, ["store", "merge", "--h5", str(new), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["complete"], r.output
    _seed_read_every_row(new)  # relinked on disk: plain h5py reads real values again
    _db_ok(new)
    # Copied to another path with its folder, then made one file in place.
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    _db_ok(tmp_path / "c" / "r.h5")
    r = runner.invoke(app, ["store", "merge", "--h5", str(tmp_path / "c" / "r.h5"), "--materialize",
                            str(tmp_path / "c" / "r.h5"), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["layout"] == "single", r.output
    assert not (tmp_path / "c" / "r.parts").exists()
    single = tmp_path / "alone.h5"
    shutil.copy(tmp_path / "c" / "r.h5", single)
    _seed_read_every_row(single)
    _db_ok(single)


def test_linked_index_copied_alone_is_never_read_as_silent_nan(tmp_path: Path) -> None:
    h5 = tmp_path / "a" / "s.h5"
    _write(h5, "--keep-parts")
    alone = Path(shutil.copy(h5, tmp_path / "alone.h5"))
    r = runner.invoke(app, ["db", "sample", "0", "--h5", str(alone)])
    assert r.exit_code == 1 and "missing" in r.output
    r = runner.invoke(app, ["db", "verify", "--h5", str(alone), "--json"])
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and doc["checked"]["storage"] == "linked"
    assert any("missing" in i["message"] for i in doc["issues"] if i["level"] == "error")
