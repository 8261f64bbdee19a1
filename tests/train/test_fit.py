"""Tests of `train fit`: run-dir files, reuse refusal, resume == uninterrupted, best.pt aliasing, early stop."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.train.conftest import fit_settings
from xaiclip_cli.cli.main import app
from xaiclip_cli.train.trainer import run_fit


def _metrics(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def _ck(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fit_cli_writes_run_dir_and_refuses_reuse(splits: Path, tmp_path: Path) -> None:
    args = ["train", "fit", "--split-dir", str(splits), "--modality", "A", "--model", "test_resnet",
            "--pretrained", "false", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
            "--num-workers", "0", "--threads", "1", "--output-dir", str(tmp_path / "runs"), "--name", "r",
            "--best-hparams-dir", str(tmp_path / "hp"), "--json"]
    runner = CliRunner()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    run = tmp_path / "runs" / "r"
    assert out["run_dir"] == str(run) and out["best_epoch"] == 1 and out["pretrained_loaded"] is False
    for name in ("config.yaml", "train.log", "metrics.csv", "test_metrics.csv", "results.json",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    rows = _metrics(run)
    assert len(rows) == 1 and {"lr", "train_loss", "val_auc", "val_patient_auc", "val_sensitivity"} <= rows[0].keys()
    test_rows = list(csv.DictReader((run / "test_metrics.csv").open()))
    assert [r["hospital"] for r in test_rows] == ["EX", "overall"] and test_rows[0]["n_patients"] == "6"
    results = json.loads((run / "results.json").read_text())
    assert results["counts"] == {"train": 30, "val": 15, "test": 18} and "torch" in results["versions"]
    meta = _ck(run / "checkpoints" / "best.pt")["meta"]
    assert (meta["arch"], meta["num_classes"], meta["in_chans"], meta["image_size"]) == ("test_resnet", 2, 1, 32)
    hp = tmp_path / "hp" / "test_resnet_A.yaml"
    assert hp.is_file() and "provenance" in hp.read_text()
    # The best-hparams file is a valid --config (its provenance block is ignored).
    pc = runner.invoke(app, ["train", "fit", "--config", str(hp), "--print-config"])
    assert pc.exit_code == 0 and "test_resnet" in pc.stdout
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.stderr


def test_stop_and_resume_equals_uninterrupted(splits: Path, tmp_path: Path) -> None:
    extra = {"training": {"epochs": 3, "model_ema": True, "model_ema_decay": 0.9, "grad_accum_steps": 2,
                          "clip_grad": 1.0},
             "augmentation": {"rotation": 10.0}}
    full = fit_settings(splits, tmp_path / "full", **extra)
    run_fit(full)
    part = fit_settings(splits, tmp_path / "part", **extra)
    stopped = run_fit(part, stop_after=2)
    assert stopped["interrupted_at_epoch"] == 2
    run = tmp_path / "part" / "run"
    assert not (run / "results.json").exists()
    resumed = fit_settings(splits, tmp_path / "part", experiment={"resume": run}, **extra)
    res = run_fit(resumed)
    a, b = _ck(tmp_path / "full" / "run" / "checkpoints" / "last.pt"), _ck(run / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    assert _same_weights(a["model"], b["model"])
    assert _same_weights(a["ema"], b["ema"])
    ma, mb = _metrics(tmp_path / "full" / "run"), _metrics(run)
    assert [r["epoch"] for r in mb] == ["1", "2", "3"]
    for ra, rb in zip(ma, mb, strict=True):
        assert ra["val_auc"] == rb["val_auc"] and ra["train_loss"] == rb["train_loss"] and ra["lr"] == rb["lr"]
    assert res["best_epoch"] == json.loads((tmp_path / "full" / "run" / "results.json").read_text())["best_epoch"]


def test_best_checkpoint_is_a_copy_of_the_early_peak(alias_splits: Path, tmp_path: Path) -> None:
    s = fit_settings(alias_splits, tmp_path, training={"epochs": 4, "early_stop_enabled": False},
                     experiment={"save_best_only": False, "checkpoint_hist": 4})
    res = run_fit(s)
    rows = _metrics(tmp_path / "run")
    aucs = [float(r["val_auc"]) for r in rows]
    best = aucs.index(max(aucs)) + 1
    assert best < len(rows), f"val AUC should peak before the last epoch: {aucs}"
    assert res["best_epoch"] == best
    ckdir = tmp_path / "run" / "checkpoints"
    best_ck = _ck(ckdir / "best.pt")
    assert best_ck["epoch"] == best
    assert _same_weights(best_ck["model"], _ck(ckdir / f"checkpoint-{best}.pt")["model"])
    assert not _same_weights(best_ck["model"], _ck(ckdir / "last.pt")["model"])
    # Reloading best.pt reproduces the recorded AUC of that epoch (checked inside fit and here).
    assert res["best_val_metrics"]["auc"] == pytest.approx(aucs[best - 1], abs=1e-6)
    assert res["best_val"] == pytest.approx(max(aucs), abs=1e-6)


def test_early_stop_at_patience(alias_splits: Path, tmp_path: Path) -> None:
    s = fit_settings(alias_splits, tmp_path, training={"epochs": 20, "early_stop_patience": 2})
    res = run_fit(s)
    rows = _metrics(tmp_path / "run")
    aucs = [float(r["val_auc"]) for r in rows]
    best = aucs.index(max(aucs)) + 1
    assert res["stopped_early"] is True
    assert len(rows) == best + 2 == res["epochs_run"]
    last = _ck(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["early_stop"]["bad_epochs"] == 2
