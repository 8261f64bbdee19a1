"""End to end: `xaiclip store image|text` (fake backend and source) then `xaiclip db ...` reads the values back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.store.fakes import expected_features, fake_image, patch_jobs
from xaiclip_cli.cli.main import app
from xaiclip_cli.store.reader import StoreReader

SIZES = {"train": 5, "val": 2, "test": 3}
runner = CliRunner()


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_written_by_store_read_by_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    patch_jobs(monkeypatch, sizes=SIZES)
    from xaiclip_cli.store import jobs

    # Three labels, like the fake source's classes (labels = index % 3): verify checks labels < len(label_texts).
    monkeypatch.setattr(jobs, "open_prompts", lambda ref: {
        "name": ref, "labels": ["alpha", "beta", "gamma"], "label_templates": ["a {} cell", "an image of {}"],
        "concepts": ["round", "dark", "big"], "concept_templates": ["cell with {}"]})
    h5 = tmp_path / "lib.h5"
    r = runner.invoke(app, ["store", "image", "--h5", str(h5), "--layout", layout, "--part-rows", "4",
                            "--device", "cpu", "--batch-size", "3", "--quiet"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["store", "text", "--h5", str(h5), "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output

    r = runner.invoke(app, ["db", "verify", "--h5", str(h5), "--full", "--require-complete", "--json"])
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["ok"], doc["issues"]

    rows = [("train", i) for i in range(5)] + [("val", i) for i in range(2)] + [("test", i) for i in range(3)]
    with StoreReader(h5) as rd:
        for row, (split, idx) in enumerate(rows):
            s = rd.sample(row)
            cls, tok = expected_features(fake_image(split, idx))
            assert (s.split, s.id, s.label) == (split, row, idx % 3)
            np.testing.assert_allclose(s.image_feature, cls, atol=1e-6)
            np.testing.assert_allclose(s.image_token_feature, tok, atol=2e-3)
        got_rows, cls = rd.batch("test", [2, 0], "image")
        np.testing.assert_array_equal(got_rows, [9, 7])
        np.testing.assert_allclose(cls[0], expected_features(fake_image("test", 2))[0], atol=1e-6)
        names = rd.template_names()
        assert names == ["concept_prompts_t01", "label_prompts_t01", "label_prompts_t02"]
        sub = rd.fetch(None, "concept", ["big", "round"])["concept_prompts_t01"]
        full = rd.fetch(["concept_prompts_t01"])["concept_prompts_t01"]
        np.testing.assert_array_equal(sub, full[[2, 0]])
    r = runner.invoke(app, ["db", "summarize", "--h5", str(h5), "--json"])
    doc = json.loads(r.stdout)
    assert doc["split_counts"] == SIZES and doc["completeness"]["complete"]
    # A finished single-process run ends as one self-contained file, whichever layout wrote it.
    assert doc["provenance"]["layout"] == "single" and doc["provenance"]["model_id"] == "fake-model"


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["sharded", "single"])
def test_reading_while_store_image_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    """A concurrent reader gets the written prefix with the right values, or one of our clear errors; never garbage.

    File locking is off on both sides (as on NFS/Lustre, store.md §8): with it on, a reader holding the index
    open makes the writer's next index update fail, which is the writer's concern, not what is tested here.
    """
    import os
    import subprocess
    import sys
    import time

    from xaiclip_cli.errors import XaiclipError

    h5 = tmp_path / "lib.h5"
    monkeypatch.setenv("HDF5_USE_FILE_LOCKING", "FALSE")
    env = {**os.environ, "XAICLIP_FAKE_DELAY": "0.15", "XAICLIP_FAKE_SIZES": json.dumps(SIZES)}
    cli = Path(__file__).with_name("fake_cli.py")
    w = subprocess.Popen([sys.executable, str(cli), "store", "image", "--h5", str(h5), "--layout", layout,
                          "--part-rows", "2", "--batch-size", "1", "--device", "cpu", "--quiet"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    oracle = [expected_features(fake_image(s, i))[0] for s in SIZES for i in range(SIZES[s])]
    seen_rows: set[int] = set()
    errors: set[str] = set()
    deadline = time.time() + 60
    while w.poll() is None and time.time() < deadline:
        try:
            with StoreReader(h5) as rd:
                rows, cls = rd.batch("all", None, "image")
                for row, v in zip(rows.tolist(), cls, strict=True):
                    np.testing.assert_allclose(v, oracle[row], atol=1e-6)
                seen_rows.update(rows.tolist())
        except XaiclipError as exc:  # the only acceptable failure: a one-line, named reason
            assert "\n" not in str(exc)
            errors.add(str(exc).split(":")[0][:40])
        time.sleep(0.02)
    _, err = w.communicate(timeout=60)
    assert w.returncode == 0, err
    with StoreReader(h5) as rd:
        rows, cls = rd.batch("all", None, "image")
        assert rows.tolist() == list(range(10))
    assert seen_rows, errors  # the reader saw rows while the writer was running
