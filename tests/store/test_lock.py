"""Writer vs a reader holding the store (HDF5 file locking): wait with back-off, then one clear line, exit 1."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.store.fakes import patch_jobs
from xaiclip_cli.cli.main import app
from xaiclip_cli.store import layout as L
from xaiclip_cli.store import writer
from xaiclip_cli.store.index import safe_refresh_index

runner = CliRunner()

_HOLDER = """
import sys, time, h5py
f = h5py.File(sys.argv[1], "r")
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
f.close()
"""


@contextmanager
def held(path: Path, seconds: float = 30.0) -> Iterator[subprocess.Popen]:
    """Another process holding ``path`` open read-only (a reader) for up to ``seconds``."""
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_jobs(monkeypatch)


def test_locked_store_text_fails_after_wait_with_one_line(tmp_path: Path, fake: None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    h5 = tmp_path / "lib.h5"
    assert runner.invoke(app, ["store", "text", "--h5", str(h5), "--prompts", "mini"]).exit_code == 0
    before = h5.read_bytes()
    monkeypatch.setattr(writer, "LOCK_WAIT_S", 0.3)
    with held(h5):
        t0 = time.monotonic()
        r = runner.invoke(app, ["store", "text", "--h5", str(h5), "--prompts", "mini", "--force"])
        waited = time.monotonic() - t0
    assert r.exit_code == 1, r.output
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "store is locked by another process (a reader?)" in r.stderr and str(h5) in r.stderr
    assert waited >= 0.3  # it retried before giving up
    assert h5.read_bytes() == before and not list(tmp_path.glob("*.damaged"))  # nothing moved or rewritten


def test_locked_index_store_image_refuses_and_keeps_the_index(tmp_path: Path, fake: None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    h5 = tmp_path / "lib.h5"
    assert runner.invoke(app, ["store", "image", "--h5", str(h5), "--part-rows", "4"]).exit_code == 0
    monkeypatch.setattr(writer, "LOCK_WAIT_S", 0.2)
    with held(h5):
        r = runner.invoke(app, ["store", "image", "--h5", str(h5), "--part-rows", "4"])
    assert r.exit_code == 1 and "store is locked by another process" in r.stderr
    assert not list(tmp_path.glob("*.damaged")) and not list(tmp_path.glob("*.rebuild"))
    r = runner.invoke(app, ["store", "image", "--h5", str(h5), "--part-rows", "4", "--json"])  # lock gone
    assert r.exit_code == 0, r.output


def test_writer_waits_for_a_reader_that_closes(tmp_path: Path, fake: None) -> None:
    h5 = tmp_path / "lib.h5"
    assert runner.invoke(app, ["store", "text", "--h5", str(h5), "--prompts", "mini"]).exit_code == 0
    with held(h5, seconds=0.6):
        r = runner.invoke(app, ["store", "image", "--h5", str(h5), "--part-rows", "4", "--layout", "sharded"])
    assert r.exit_code == 0, r.output
    with h5py.File(h5, "r") as f:
        assert int(f.attrs["n_written"]) == 10 and len(f["templates"]) == 3


def test_refresh_of_a_locked_index_raises_locked_not_rebuilds(tmp_path: Path) -> None:
    h5 = tmp_path / "idx.h5"
    with h5py.File(h5, "w") as f:
        f["x"] = np.arange(3)
    with held(h5), pytest.raises(writer.StoreLockedError, match="a reader"):
        safe_refresh_index(h5, L.Plan({"train": 3}, 4), wait=0.0)
    with h5py.File(h5, "r") as f:
        assert list(f) == ["x"]  # untouched: not treated as damaged
    assert writer.try_open(tmp_path / "missing.h5") is None


def test_lock_error_detection() -> None:
    assert writer.is_lock_error(BlockingIOError(11, "Unable to synchronously open file (unable to lock file)"))
    assert writer.is_lock_error(OSError("unable to lock file, errno = 11"))
    assert not writer.is_lock_error(OSError("file signature not found"))
    assert not writer.is_lock_error(OSError("file locking disabled on this file system"))
