"""Tests of `train show` (tables, curves) and `train pipeline` (all steps, then skipped on a second call)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.train.conftest import fit_settings
from xaiclip_cli.cli.main import app
from xaiclip_cli.train.trainer import run_fit

runner = CliRunner()


def test_show_reads_run_and_writes_curves(splits: Path, tmp_path: Path) -> None:
    run_fit(fit_settings(splits, tmp_path, training={"epochs": 2}))
    res = runner.invoke(app, ["train", "show", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [e["epoch"] for e in out["epochs"]] == [1, 2] and out["best_epoch"] in (1, 2)
    assert [r["hospital"] for r in out["test"]] == ["EX", "overall"]
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000


@pytest.mark.slow
def test_pipeline_runs_every_step_then_skips(tree: Path, tmp_path: Path) -> None:
    args = ["train", "pipeline", "--root-dir", str(tree), "--split-dir", str(tmp_path / "splits"), "--model",
            "test_resnet", "--pretrained", "false", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
            "--device", "cpu", "--num-workers", "0", "--threads", "1", "--output-dir", str(tmp_path / "runs"),
            "--best-hparams-dir", "", "--report-to", "none",
            "--set", f"extract.output_dir={tmp_path / 'features'}", "--set", f"fuse.output_dir={tmp_path / 'fusion'}",
            "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    steps = [s["step"] for s in json.loads(res.stdout)["steps"]]
    assert steps == ["split", "fit A", "extract A", "fit P", "extract P", "align", "fuse"]
    assert (tmp_path / "fusion" / "fusion_metrics.csv").is_file()
    again = json.loads(runner.invoke(app, args).stdout)["steps"]
    assert all("skipped" in s["status"] for s in again if s["step"].startswith(("split", "fit", "extract")))
