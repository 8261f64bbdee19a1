"""The root command: groups, --version, python -m, and a light import (no heavy libraries for --help)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from xaiclip_cli import __version__
from xaiclip_cli.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ["torch", "transformers", "timm", "matplotlib", "cv2", "h5py", "sklearn", "medmnist"]


def test_help_lists_groups() -> None:
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0
    for g in ("store", "db", "cam", "attrib", "eval", "train"):
        assert f"  {g} " in r.stdout


def test_version() -> None:
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"xaiclip {__version__}"


def test_python_dash_m() -> None:
    out = subprocess.run([sys.executable, "-m", "xaiclip_cli", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == f"xaiclip {__version__}"


def test_no_args_shows_help_and_unknown_group_is_usage_error() -> None:
    r = CliRunner().invoke(app, [])
    assert "Usage" in r.output
    assert CliRunner().invoke(app, ["nosuchgroup"]).exit_code == 2


def test_cli_import_is_light() -> None:
    code = (
        "import sys, json; import xaiclip_cli.cli.main as m; "
        "from typer.main import get_command; get_command(m.app); "
        f"print(json.dumps([k for k in {HEAVY!r} if k in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_group_help_is_light() -> None:
    for g in ("store", "db", "cam", "attrib", "eval", "train"):
        code = (
            "import sys, json\nfrom xaiclip_cli.cli.main import app\n"
            "try:\n    app([" + repr(g) + ", '--help'])\nexcept SystemExit:\n    pass\n"
            f"sys.stderr.write(json.dumps([k for k in {HEAVY!r} if k in sys.modules]))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        assert json.loads(out.stderr.strip().splitlines()[-1]) == [], g
