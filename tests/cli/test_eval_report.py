"""`xaiclip eval report` end to end: prints the path, --json says what went in, every bad input exits 2 in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.store.test_reader_fixtures import build_store
from tests.viz.report_inputs import run_cli, write_attrib_run, write_faithfulness_eval
from xaiclip_cli.cli.main import app

runner = CliRunner()
KEYS = [f"test_{i:05d}" for i in range(4)]


def report(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, ["eval", "report", *args])
    return r.exit_code, r.stdout, r.stderr


def one_line_error(stderr: str, *fragments: str) -> None:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    ev = tmp_path / "eval_a"
    write_faithfulness_eval(ev, KEYS, seed=1)
    attrib = write_attrib_run(tmp_path / "attrib", KEYS, tmp_path / "images")
    store = build_store(tmp_path / "store.h5", layout="single").path
    return {"eval": ev, "attrib": attrib, "store": Path(store), "root": tmp_path}


def test_prints_the_path_and_json(runs: dict[str, Path]) -> None:
    out = runs["root"] / "sub" / "r.html"
    code, stdout, stderr = report(str(runs["eval"]), str(runs["attrib"]), str(runs["store"]), "--out", str(out))
    assert code == 0, stderr
    assert stdout == f"{out}\n" and out.is_file()
    html = out.read_text()
    assert "store.h5" in html and "split_counts" in html  # the store's summary is in the report
    code, stdout, stderr = report(str(runs["eval"]), "--out", str(out), "--overwrite", "--json",
                                  "--max-images", "2", "--thumb", "48", "--sort-by", "deletion_auc")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["out"] == str(out) and doc["bytes"] == out.stat().st_size
    assert [i["kind"] for i in doc["inputs"]] == ["eval"] and doc["inputs"][0]["items"] == len(KEYS)
    assert doc["gallery_items"] == len(KEYS) and doc["gallery_shown"] == 2
    assert doc["sort_by"] == "deletion_auc" and doc["metrics"] == ["insertion_auc", "deletion_auc"]


def test_refuses_to_overwrite(runs: dict[str, Path]) -> None:
    out = runs["root"] / "r.html"
    out.write_text("an older report")
    code, stdout, stderr = report(str(runs["eval"]), "--out", str(out))
    assert code == 2 and stdout == ""
    one_line_error(stderr, str(out), "--overwrite")
    assert out.read_text() == "an older report"


@pytest.mark.parametrize("case", ["unknown_folder", "missing", "text_file", "no_inputs", "bad_sort", "bad_thumb",
                                  "broken_json"])
def test_bad_inputs_exit_2_in_one_line(runs: dict[str, Path], case: str) -> None:
    root = runs["root"]
    out = str(root / "r.html")
    (root / "plain").mkdir()
    (root / "notes.txt").write_text("x")
    broken = root / "broken"
    broken.mkdir()
    (broken / "eval.json").write_text('{"metrics": ')
    args, fragments = {
        "unknown_folder": ([str(root / "plain")], ["plain", "not a cam, attrib or eval output folder"]),
        "missing": ([str(root / "nope")], ["nope", "not found"]),
        "text_file": ([str(root / "notes.txt")], ["notes.txt", "not a store file"]),
        "no_inputs": ([], ["no inputs"]),
        "bad_sort": ([str(runs["eval"]), "--sort-by", "speed"], ["--sort-by", "speed", "insertion_auc"]),
        "bad_thumb": ([str(runs["eval"]), "--thumb", "2"], ["thumb"]),
        "broken_json": ([str(broken)], ["eval.json", "not readable JSON"]),
    }[case]
    code, stdout, stderr = report(*args, "--out", out)
    assert code == 2, (code, stderr)
    one_line_error(stderr, *fragments)
    assert stdout == "" and not Path(out).exists()


def test_subprocess_stdout_is_only_the_path(runs: dict[str, Path]) -> None:
    """Real streams: stdout holds the path alone (scripts and `make demo` read it), no traceback anywhere."""
    out = runs["root"] / "r.html"
    proc = run_cli("eval", "report", str(runs["eval"]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{out}\n" and "Traceback" not in proc.stderr
    proc = run_cli("eval", "report", str(runs["root"] / "nope"), "--out", str(runs["root"] / "other.html"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
