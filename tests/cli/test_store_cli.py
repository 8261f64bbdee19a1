"""`xaiclip store text|image|merge` through the CLI: JSON results, saved config, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
from typer.testing import CliRunner

from tests.store.fakes import patch_jobs
from xaiclip_cli.cli.main import app

runner = CliRunner()


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_jobs(monkeypatch)


def _ok(args: list[str]) -> dict:
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_text_image_merge_json_and_config(tmp_path: Path, fake: None) -> None:
    h5 = str(tmp_path / "lib.h5")
    t = _ok(["store", "text", "--h5", h5, "--prompts", "mini"])
    assert t["written"] == 3 and Path(t["config"]).name == "lib.h5.text.config.yaml"
    i = _ok(["store", "image", "--h5", h5, "--part-rows", "4", "--batch-size", "3", "--keep-parts"])
    assert (i["rows_written"], i["rows_total"], i["parts_total"], i["complete"]) == (10, 10, 3, True)
    assert i["layout"] == "sharded"
    saved = (tmp_path / "lib.h5.image.config.yaml").read_text()
    assert "part_rows: 4" in saved and "store:" in saved
    again = _ok(["store", "image", "--h5", h5, "--part-rows", "4", "--keep-parts"])
    assert again["rows_written"] == 0 and again["rows_skipped"] == 10
    m = _ok(["store", "merge", "--h5", h5])
    assert m["complete"] and m["split_counts"] == {"train": 5, "val": 2, "test": 3}
    with h5py.File(h5, "r") as f:
        assert len(f["templates"]) == 3 and int(f.attrs["n_written"]) == 10
    v = _ok(["db", "verify", "--h5", h5, "--require-complete", "--full"])  # fake labels fit the prompt set
    assert v["ok"] and v["n_errors"] == 0
    m = _ok(["store", "merge", "--h5", h5, "--materialize", h5])  # in place: one self-contained file
    assert m["layout"] == "single" and not (tmp_path / "lib.parts").exists()
    v = _ok(["db", "verify", "--h5", h5, "--require-complete", "--full"])
    assert v["ok"] and any(i["level"] == "note" and "self-contained" in i["message"] for i in v["issues"])


def test_merge_of_a_single_file_store_is_a_no_op_exit_0(tmp_path: Path, fake: None) -> None:
    import hashlib

    h5 = tmp_path / "one.h5"
    i = _ok(["store", "image", "--h5", str(h5), "--part-rows", "4"])  # ends as one self-contained file
    assert i["layout"] == "single" and i["complete"]
    before = hashlib.md5(h5.read_bytes()).hexdigest()
    m = _ok(["store", "merge", "--h5", str(h5)])
    assert m["layout"] == "single" and m["complete"] and m["rows_done"] == m["rows_total"] == 10
    assert "nothing to merge" in m["message"] and m["split_counts"] == {"train": 5, "val": 2, "test": 3}
    assert hashlib.md5(h5.read_bytes()).hexdigest() == before  # untouched
    r = runner.invoke(app, ["store", "merge", "--h5", str(h5)])
    assert r.exit_code == 0 and "nothing to merge" in r.output


def test_store_options_have_no_unused_seed_or_output_dir() -> None:
    from xaiclip_cli.config.store import StoreSettings

    assert "seed" not in StoreSettings.model_fields and "output_dir" not in StoreSettings.model_fields
    r = runner.invoke(app, ["store", "image", "--seed", "3"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["store", "image", "--limit", "0"])
    assert r.exit_code == 2 and "limit" in r.stderr


def test_refusals_are_one_line_exit_2(tmp_path: Path, fake: None) -> None:
    h5 = str(tmp_path / "lib.h5")
    _ok(["store", "image", "--h5", h5, "--part-rows", "4"])
    r = runner.invoke(app, ["store", "image", "--h5", h5, "--part-rows", "4", "--revision", "other"])
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and "pass --overwrite" in r.stderr and "Traceback" not in r.stderr
    r = runner.invoke(app, ["store", "image", "--h5", h5, "--part-rows", "4", "--revision", "other", "--overwrite",
                            "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["store", "text", "--h5", h5, "--only", "label_prompts_t07"])
    assert r.exit_code == 2 and "--only" in r.stderr
    r = runner.invoke(app, ["store", "image", "--h5", h5, "--layout", "zip"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["store", "image", "--h5", h5, "--part-rows", "0"])
    assert r.exit_code == 2 and "part_rows" in r.stderr


def test_merge_of_unfinished_parts_exits_3(tmp_path: Path, fake: None, monkeypatch: pytest.MonkeyPatch) -> None:
    h5 = str(tmp_path / "lib.h5")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    _ok(["store", "image", "--h5", h5, "--part-rows", "4"])
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    r = runner.invoke(app, ["store", "merge", "--h5", h5])
    assert r.exit_code == 3 and "merged 1 of 3 parts" in r.stderr


def test_print_config_and_env_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XAICLIP_STORE__GPUS", "0,1")
    r = runner.invoke(app, ["store", "image", "--print-config", "--no-tokens", "--cls-dtype", "float16"])
    assert r.exit_code == 0, r.output
    assert "gpus:\n  - 0\n  - 1" in r.stdout and "tokens: false" in r.stdout and "cls_dtype: float16" in r.stdout


def test_help_lists_the_three_commands() -> None:
    r = runner.invoke(app, ["store", "--help"])
    assert r.exit_code == 0
    for c in ("text", "image", "merge"):
        assert c in r.stdout
