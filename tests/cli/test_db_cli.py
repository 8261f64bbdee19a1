"""`xaiclip db ...` end to end through Typer: JSON values, tables, exports, and every bad input's exit code."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.store.test_reader_fixtures import CONCEPTS, Truth, build_store
from xaiclip_cli.cli.main import app

runner = CliRunner()


def db(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, ["db", *args])
    return r.exit_code, r.stdout, r.stderr


def one_line_error(stderr: str, *fragments: str) -> None:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]


@pytest.fixture(params=["single", "sharded"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Truth:
    return build_store(tmp_path / "store.h5", layout=request.param)


def test_summarize_json_and_table(store: Truth) -> None:
    code, out, _ = db("summarize", "--h5", str(store.path), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["image_features"] == [14, 8] and doc["ids_preview"] == [0, 1, 2, 3, 4]
    assert doc["split_counts"] == {"train": 6, "val": 3, "test": 5}
    assert doc["completeness"]["complete"] is True
    assert doc["provenance"]["layout"] == ("sharded" if store.parts else "single")
    code, out, _ = db("summarize", "--h5", str(store.path))
    assert code == 0 and "split_counts" in out and "concept_prompts_t01" in out


def test_tree_table_lists_seed_attrs(store: Truth) -> None:
    code, out, _ = db("tree", "--h5", str(store.path), "--max-templates", "1")
    assert code == 0
    assert "attrs: {D, T_img, created_at, version, split_counts" in out and "...}" in out
    assert "image_token_features  # [14, 6, 8] float16" in out and "concept_prompts_t01/" in out


def test_sample_json_values_and_export(store: Truth, tmp_path: Path) -> None:
    code, out, _ = db("sample", "5", "--h5", str(store.path), "--json")
    assert code == 0
    doc = json.loads(out)
    assert (doc["index"], doc["id"], doc["label"], doc["split"]) == (5, 5, int(store.labels[5]), "train")
    np.testing.assert_allclose(doc["image_feature"]["head"], store.cls[5][:5], rtol=1e-6)
    assert doc["image_feature"]["norm"] == pytest.approx(1.0, abs=1e-5)
    assert doc["image_token_feature"]["shape"] == [6, 8] and doc["image_token_feature"]["dtype"] == "float16"
    out_file = tmp_path / "s5.npz"
    assert db("sample", "5", "--h5", str(store.path), "--out", str(out_file), "--quiet")[0] == 0
    z = np.load(out_file)
    np.testing.assert_array_equal(z["image_feature"], store.cls[5])
    np.testing.assert_array_equal(z["image_token_feature"], store.tokens[5])
    assert (int(z["id"]), str(z["split"])) == (5, "train")
    code, _, err = db("sample", "5", "--h5", str(store.path), "--out", str(out_file))
    assert code == 2
    one_line_error(err, "exists", "--overwrite")
    assert db("sample", "5", "--h5", str(store.path), "--out", str(out_file), "--overwrite", "--quiet")[0] == 0
    code, _, err = db("sample", "5", "--h5", str(store.path), "--out", str(tmp_path / "s.npy"))
    assert code == 2
    one_line_error(err, ".npz")


def test_batch_export_in_user_order(store: Truth, tmp_path: Path) -> None:
    f = tmp_path / "b.npy"
    code, out, _ = db("batch", "--h5", str(store.path), "--split", "test", "--idx", "3,0,4", "--out", str(f), "--json")
    assert code == 0
    rows = store.split_rows("test")[[3, 0, 4]]
    np.testing.assert_array_equal(np.load(f), store.cls[rows])
    doc = json.loads(out)
    assert doc["n"] == 3 and doc["rows_head"] == rows.tolist() and doc["values"]["shape"] == [3, 8]
    z = tmp_path / "b.npz"
    assert db("batch", "--h5", str(store.path), "--split", "train", "--idx", "1:5:2", "--feature", "patches",
              "--out", str(z), "--quiet")[0] == 0
    np.testing.assert_array_equal(np.load(z)["patches"], store.tokens[[1, 3]])
    np.testing.assert_array_equal(np.load(z)["rows"], [1, 3])


def test_batch_bad_inputs(store: Truth) -> None:
    code, _, err = db("batch", "--h5", str(store.path), "--split", "val", "--idx", "0,7")
    assert code == 2
    one_line_error(err, "position 7 out of range for split 'val'")
    code, _, err = db("batch", "--h5", str(store.path), "--feature", "patches", "--max-rows", "3")
    assert code == 2
    one_line_error(err, "--max-rows 3")
    code, _, err = db("batch", "--h5", str(store.path), "--idx", "x")
    assert code == 2
    one_line_error(err, "--idx")
    code, _, err = db("sample", "99", "--h5", str(store.path))
    assert code == 2
    one_line_error(err, "index 99 out of range")


def test_templates_and_fetch(store: Truth, tmp_path: Path) -> None:
    code, out, _ = db("templates", "--h5", str(store.path), "--label", "--json")
    assert code == 0
    doc = json.loads(out)
    assert [t["name"] for t in doc["templates"]] == ["label_prompts_t01"] and doc["templates"][0]["K"] == 3
    f = tmp_path / "f.npz"
    code, out, _ = db("fetch", "--h5", str(store.path), "--concept", "--concept-list", CONCEPTS[3],
                      "--concept-list", CONCEPTS[0], "--out", str(f), "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert [g["name"] for g in doc["groups"]] == ["concept_prompts_t01", "concept_prompts_t02"]
    assert doc["groups"][0]["shape"] == [2, 8]
    want = store.templates["concept_prompts_t02"]["text"][[3, 0]]
    np.testing.assert_array_equal(np.load(f)["concept_prompts_t02"], want)
    code, _, err = db("fetch", "--h5", str(store.path), "--concept", "--concept-list", "Round nucleus")
    assert code == 2
    one_line_error(err, "unknown concept 'Round nucleus'")
    code, _, err = db("fetch", "--h5", str(store.path), "--template", "label_prompts_t07")
    assert code == 2
    one_line_error(err, "unknown template 'label_prompts_t07'")
    code, _, err = db("fetch", "--h5", str(store.path), "--concept", "--label")
    assert code == 2
    one_line_error(err, "mutually exclusive")


def test_clear_needs_yes_and_keeps_group(tmp_path: Path) -> None:
    tr = build_store(tmp_path / "s.h5")
    code, _, err = db("clear", "--h5", str(tr.path))
    assert code == 2
    one_line_error(err, "3 template groups", "--yes")
    with h5py.File(tr.path, "r") as f:
        assert len(f["templates"]) == 3
    code, out, _ = db("clear", "--h5", str(tr.path), "--force", "--json")
    assert code == 0 and json.loads(out)["n_cleared"] == 3
    with h5py.File(tr.path, "r") as f:
        assert "templates" in f and len(f["templates"]) == 0


def test_verify_exit_codes(tmp_path: Path) -> None:
    tr = build_store(tmp_path / "s.h5", n_written=9)
    code, out, _ = db("verify", "--h5", str(tr.path), "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    code, out, _ = db("verify", "--h5", str(tr.path), "--require-complete", "--json")
    assert code == 1 and json.loads(out)["issues"][0]["check"] == 3
    with h5py.File(tr.path, "a") as f:
        f.attrs["split_counts"] = json.dumps({"train": 6, "val": 3, "test": 3})
    code, out, _ = db("verify", "--h5", str(tr.path))
    assert code == 1 and "split_counts" in out


def test_default_h5_and_bad_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = db("summarize")
    assert code == 2
    one_line_error(err, "store not found: xaiclip_features.h5")
    build_store(tmp_path / "xaiclip_features.h5")
    assert db("sample", "0", "--quiet")[0] == 0
    data = (tmp_path / "xaiclip_features.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    code, _, err = db("sample", "0", "--h5", "cut.h5")
    assert code == 1
    one_line_error(err, "cut.h5 is truncated")
    (tmp_path / "junk.h5").write_bytes(b"\x00" * 100)
    code, _, err = db("tree", "--h5", "junk.h5")
    assert code == 1
    one_line_error(err, "junk.h5 is not an HDF5 file")
    with h5py.File(tmp_path / "model.h5", "w") as f:
        f["layer1/weights"] = np.zeros(2)
    code, _, err = db("summarize", "--h5", "model.h5")
    assert code == 2
    one_line_error(err, "not a feature store")
    code, _, err = db("verify", "--h5", "cut.h5", "--json")
    assert code == 1


def test_db_cli_module_imports_no_heavy_libraries() -> None:
    import subprocess
    import sys

    code = "import sys, xaiclip_cli.cli.db; print(sorted(m for m in ('h5py', 'torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "h5py" not in out and "torch" not in out
