"""--h5 naming something that is not a store: store image/text/merge refuse (exit 2) and leave it byte-identical.

Only what provably belongs to a store (its schema attribute, or a parts folder of ours beside a damaged index) is
written into, set aside as .damaged or deleted by --overwrite.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.store.fakes import FakeBackend, FakeSource, patch_jobs, read_rows
from xaiclip_cli.cli.main import app
from xaiclip_cli.store import layout as L
from xaiclip_cli.store.image import ImageOptions, run_image_stage
from xaiclip_cli.store.target import inspect_target

runner = CliRunner()


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _foreign_h5(p: Path) -> Path:
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(5)
        f.attrs["owner"] = "someone else"
    return p


def _text_file(p: Path) -> Path:
    p.write_text("my notes\n")
    return p


def _empty_file(p: Path) -> Path:
    p.write_bytes(b"")
    return p


MAKERS = {"foreign-hdf5": _foreign_h5, "text": _text_file, "empty": _empty_file}
COMMANDS = {
    "image": ["store", "image", "--part-rows", "4"],
    "image-single": ["store", "image", "--layout", "single"],
    "text": ["store", "text", "--prompts", "mini"],
    "merge": ["store", "merge"],
}


@pytest.fixture(autouse=True)
def _fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_jobs(monkeypatch)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("kind", list(MAKERS))
def test_file_that_is_not_a_store_is_refused_and_left_byte_identical(tmp_path: Path, kind: str, command: str,
                                                                     overwrite: bool) -> None:
    if command == "merge" and overwrite:
        pytest.skip("store merge --overwrite only concerns --materialize OUT")
    h5 = MAKERS[kind](tmp_path / "s.h5")
    before, files = _digest(h5), _listing(tmp_path)
    args = [*COMMANDS[command], "--h5", str(h5)] + (["--overwrite"] if overwrite else [])
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "not provably a store" in r.output or "no store at" in r.output
    assert _digest(h5) == before
    assert _listing(tmp_path) == files  # nothing renamed to .damaged, no parts folder, no saved config


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("command", ["image", "image-single", "text", "merge"])
def test_directory_is_refused(tmp_path: Path, command: str, overwrite: bool) -> None:
    d = tmp_path / "s.h5"
    d.mkdir()
    (d / "keep.txt").write_text("mine")
    r = runner.invoke(app, [*COMMANDS[command], "--h5", str(d)] + (["--overwrite"] if overwrite else []))
    assert r.exit_code == 2, r.output
    assert "is a directory" in r.output
    assert _listing(tmp_path) == ["s.h5"] and _listing(d) == ["keep.txt"]


def test_ranks_refuse_a_foreign_file_too(tmp_path: Path) -> None:
    h5 = _foreign_h5(tmp_path / "s.h5")
    before = _digest(h5)
    opts = ImageOptions(h5=h5, part_rows=4, batch_size=3, rank=0, world=2, manage_index=False)
    with pytest.raises(Exception) as exc:
        run_image_stage(FakeSource(), FakeBackend(), opts)
    assert getattr(exc.value, "exit_code", None) == 2
    assert _digest(h5) == before and not L.parts_dir(h5).exists()


def test_damaged_index_beside_our_parts_is_set_aside_and_rebuilt(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    h5 = tmp_path / "s.h5"
    ref = read_rows(_run_sharded(tmp_path / "ref" / "s.h5"))
    _run_sharded(h5, keep_parts=True)
    h5.write_bytes(b"")  # an index killed while it was created: empty, but the parts folder proves the store
    r = runner.invoke(app, ["store", "image", "--h5", str(h5), "--part-rows", "4", "--keep-parts"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s.h5.damaged").exists() and (tmp_path / "s.h5.damaged").stat().st_size == 0
    assert "moved it to s.h5.damaged and rebuilding the index from the parts" in caplog.text
    got = read_rows(h5)
    for k in ("image_features", "image_token_features", "ids", "labels", "written"):
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    # A second damage never overwrites the first set-aside file.
    h5.write_bytes(b"")
    assert runner.invoke(app, ["store", "merge", "--h5", str(h5)]).exit_code == 0
    assert (tmp_path / "s.h5.damaged.1").exists()


def test_overwrite_deletes_only_store_files(tmp_path: Path) -> None:
    h5 = tmp_path / "s.h5"
    _run_sharded(h5, keep_parts=True)
    (L.parts_dir(h5) / "notes.txt").write_text("mine")
    r = runner.invoke(app, ["store", "image", "--h5", str(h5), "--part-rows", "4", "--overwrite", "--keep-parts"])
    assert r.exit_code == 0, r.output
    assert (L.parts_dir(h5) / "notes.txt").read_text() == "mine"
    assert inspect_target(h5).kind == "store"


def test_unreadable_store_file_needs_overwrite_and_is_set_aside(tmp_path: Path) -> None:
    h5 = tmp_path / "s.h5"
    run_image_stage(FakeSource(), FakeBackend(), ImageOptions(h5=h5, layout="single", batch_size=3))
    data = h5.read_bytes()
    h5.write_bytes(data[: len(data) // 3])  # truncated: an HDF5 signature that will not open
    before = _digest(h5)
    r = runner.invoke(app, ["store", "image", "--h5", str(h5), "--layout", "single"])
    assert r.exit_code == 2 and "--overwrite" in r.output and _digest(h5) == before
    r = runner.invoke(app, ["store", "image", "--h5", str(h5), "--layout", "single", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert _digest(tmp_path / "s.h5.damaged") == before  # set aside, not deleted


def _run_sharded(h5: Path, keep_parts: bool = True) -> Path:
    run_image_stage(FakeSource(), FakeBackend(), ImageOptions(h5=h5, part_rows=4, batch_size=3,
                                                              materialize=not keep_parts))
    return h5
