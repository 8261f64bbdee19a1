"""Crash safety: a store image run killed (SIGKILL) or interrupted (SIGINT) resumes to exactly the same rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.store.fakes import FakeBackend, FakeSource, read_rows
from xaiclip_cli.store import layout as L
from xaiclip_cli.store.image import ImageOptions, run_image_stage

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"train": 30, "val": 10, "test": 16}
ARGS = ["store", "image", "--part-rows", "8", "--batch-size", "3", "--quiet"]


def _start(h5: Path, delay: float, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    env = dict(os.environ, XAICLIP_FAKE_DELAY=str(delay), XAICLIP_FAKE_SIZES=json.dumps(SIZES))
    return subprocess.Popen([sys.executable, str(ROOT / "tests/store/fake_cli.py"), *ARGS, *extra, "--h5", str(h5)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        if time.time() - t0 > timeout:  # a hang guard, not a speed check
            pytest.fail(f"{path} never appeared")
        time.sleep(0.005)


def _reference(tmp_path: Path) -> dict[str, np.ndarray]:
    ref = tmp_path / "ref" / "s.h5"
    run_image_stage(FakeSource(SIZES), FakeBackend(), ImageOptions(h5=ref, part_rows=8, batch_size=3,
                                                                   materialize=False))
    return read_rows(ref)


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
@pytest.mark.parametrize(("keep_parts", "workers"), [(False, 0), (True, 0), (False, 2)])
def test_sigkill_at_several_moments_then_resume_is_exact(tmp_path: Path, keep_parts: bool, workers: int) -> None:
    h5 = tmp_path / "run" / "s.h5"
    extra = (("--keep-parts",) if keep_parts else ()) + ("--workers", str(workers))
    rng = np.random.default_rng(0)
    for part in (1, 4):  # kill once early, once later, each a little after a part finished
        proc = _start(h5, delay=0.01, extra=extra)
        _wait_for(L.part_path(h5, part), proc)
        time.sleep(float(rng.uniform(0, 0.05)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
    proc = _start(h5, delay=0.0, extra=extra)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    _assert_same(_reference(tmp_path), read_rows(h5))
    if keep_parts:  # no leftovers: every part finished and renamed, none duplicated
        names = sorted(p.name for p in L.parts_dir(h5).iterdir())
        assert names == [L.part_name(k) for k in range(7)]
    else:  # one self-contained file, parts gone, nothing else left beside it
        assert not L.parts_dir(h5).exists()
        assert sorted(p.name for p in h5.parent.iterdir()) == ["s.h5", "s.h5.image.config.yaml"]


@pytest.mark.slow
def test_sigint_exits_130_with_a_valid_store_and_resume_completes(tmp_path: Path) -> None:
    h5 = tmp_path / "run" / "s.h5"
    proc = _start(h5, delay=0.02)
    _wait_for(L.part_path(h5, 1), proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert "interrupted" in err.decode() and "Traceback" not in err.decode()
    rows = read_rows(h5)  # opens: the store is valid
    assert int(rows["n_written"]) == int(rows["written"].sum()) < 56
    proc = _start(h5, delay=0.0)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    _assert_same(_reference(tmp_path), read_rows(h5))
