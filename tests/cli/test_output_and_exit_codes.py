"""Output conventions and exit codes of every settings command (through a demo app built the same way)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.cli.demo_app import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def eight_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Output conventions, not hardware: --gpus lists pass the device check as if this machine had 8 GPUs."""
    import xaiclip_cli.devices as devices

    monkeypatch.setattr(devices, "_cuda_state", lambda: (8, ""))


def invoke(*args: str, env: dict | None = None):
    return runner.invoke(app, ["run", *args], env=env)


def test_ok_json_is_one_document(tmp_path: Path) -> None:
    r = invoke("--json", "--output-dir", str(tmp_path), "--texts", "a, with comma", "--texts", "b", "--gpus", "0,1")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["texts"] == ["a, with comma", "b"]
    assert doc["gpus"] == [0, 1]
    assert doc["rows"][0] == {"name": "a[1]", "value": 1.5}


def test_table_output_escapes_brackets(tmp_path: Path) -> None:
    r = invoke("--output-dir", str(tmp_path))
    assert r.exit_code == 0
    assert "a[1]" in r.stdout  # rich markup would swallow an unescaped [1]
    assert "Demo result." in r.stdout


def test_config_saved_beside_outputs_and_reloadable(tmp_path: Path) -> None:
    r = invoke("--output-dir", str(tmp_path), "--lr", "0.25", "--json")
    assert r.exit_code == 0
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["attrib"]["optim"]["lr"] == 0.25
    r2 = invoke("--config", str(tmp_path / "config.yaml"), "--json")
    assert json.loads(r2.stdout)["lr"] == 0.25


@pytest.mark.parametrize(
    ("mode", "code", "message"),
    [
        ("runtime", 1, "error: cannot read"),
        ("usage", 2, "error: --ratio must be given with --flag"),
        ("partial", 3, None),
        ("interrupt", 130, "interrupted"),
        ("crash", 1, "error: ZeroDivisionError: boom (run with --debug for the traceback)"),
    ],
)
def test_exit_codes(tmp_path: Path, mode: str, code: int, message: str | None) -> None:
    r = invoke("--mode", mode, "--output-dir", str(tmp_path))
    assert r.exit_code == code
    if message:
        assert message in r.stderr
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_debug_shows_traceback(tmp_path: Path) -> None:
    r = invoke("--mode", "crash", "--debug", "--output-dir", str(tmp_path))
    assert r.exit_code == 1
    assert "Traceback" in r.stderr and "ZeroDivisionError" in r.stderr


@pytest.mark.parametrize(
    ("args", "field"),
    [(["--ratio", "2"], "ratio"), (["--device", "gpu"], "device"), (["--gpus", "0,x"], "gpus"),
     (["--batch-size", "0"], "optim.batch_size"), (["--set", "optim.nope=1"], "optim.nope")],
)
def test_validation_errors_exit_2_naming_the_field(args: list[str], field: str) -> None:
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert f"'{field}" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_unknown_option_is_usage_error() -> None:
    assert invoke("--no-such-option").exit_code == 2


def test_choice_is_checked() -> None:
    r = invoke("--mode", "bogus")
    assert r.exit_code == 2


def test_warnings_go_to_stderr_not_stdout(tmp_path: Path) -> None:
    r = invoke("--mode", "warn", "--json", "--output-dir", str(tmp_path))
    assert r.exit_code == 0
    json.loads(r.stdout)  # stdout stays one clean document
    assert "something odd" in r.stderr


def test_sigint_exits_130(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.cli.demo_app", "run", "--mode", "sleep", "--output-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=Path(__file__).resolve().parents[2],
    )
    deadline = time.time() + 60
    while not (tmp_path / "started").exists():
        assert proc.poll() is None, proc.stderr.read()
        if time.time() > deadline:  # a hang guard, not a speed check
            pytest.fail("the demo command never started")
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert b"interrupted" in err and b"Traceback" not in err
