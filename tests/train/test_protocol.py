"""`train fit --protocol medmnist` and `--repeats`: recipe values, CIFAR stem, nearest upsampling, LR milestones."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xaiclip_cli.cli.main import app
from xaiclip_cli.config.train import TrainSettings
from xaiclip_cli.errors import UsageError
from xaiclip_cli.train.data import prepare_batch
from xaiclip_cli.train.model import build_model, model_from_checkpoint
from xaiclip_cli.train.protocol import apply_protocol

runner = CliRunner()


def test_protocol_fills_unset_fields_and_keeps_explicit_ones() -> None:
    s, kept = apply_protocol(TrainSettings(data={"source": "medmnist:pathmnist"},
                                           experiment={"protocol": "medmnist"}, training={"epochs": 3}))
    t = s.training
    assert (t.optimizer, t.learning_rate, t.weight_decay, t.batch_size, t.scheduler) == ("adam", 1e-3, 0.0, 128,
                                                                                          "multistep")
    assert (list(t.decay_milestones), t.decay_rate, t.early_stop_enabled, t.epochs) == ([50, 75], 0.1, False, 3)
    assert kept == ["training.epochs"]
    assert (s.model.pretrained, s.data.in_chans, s.data.image_size, s.model.cifar_stem) == ("false", 3, 28, True)
    assert (s.augmentation.hflip, s.augmentation.rotation, s.augmentation.interpolation) == (0.0, 0.0, "nearest")
    assert s.experiment.repeats == 3
    big, _ = apply_protocol(TrainSettings(data={"source": "medmnist:pathmnist", "image_size": 224},
                                          experiment={"protocol": "medmnist", "repeats": 1}))
    assert (big.model.cifar_stem, big.data.image_size, big.experiment.repeats) == (False, 224, 1)  # "(224)"
    plain = TrainSettings()
    assert apply_protocol(plain) == (plain, [])
    with pytest.raises(UsageError):
        apply_protocol(TrainSettings(experiment={"protocol": "medmnist"}))


def test_cifar_stem_resnets_match_the_cifar_reference_sizes() -> None:
    # The CIFAR ResNet-18 of MedMNIST's models.py (kuangliu layout) has 11,173,962 parameters for 10 classes
    # (ResNet-50: 23,520,842, not built here to keep the test fast); timm's resnet18 with the swapped stem matches.
    model, _ = build_model("resnet18", 10, 3, 28, "false", cifar_stem=True)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert model.forward_features(torch.zeros(1, 3, 28, 28)).shape == (1, 512, 4, 4)  # strides 1,1,2,2,2
    with pytest.raises(UsageError):
        build_model("vit_tiny_patch16_224", 2, 3, 28, "false", cifar_stem=True)


def test_nearest_upsampling_repeats_pixels() -> None:
    img = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)
    x = prepare_batch(img, 4, 1, [0.0], [1.0], interpolation="nearest")
    expect = np.repeat(np.repeat(np.array([[0, 255], [51, 102]]) / 255.0, 2, 0), 2, 1)
    assert np.allclose(x[0, 0].numpy(), expect)
    grey_as_rgb = prepare_batch(img, 2, 3, [0.5], [0.5])
    assert torch.equal(grey_as_rgb[0, 0], grey_as_rgb[0, 2])


def test_protocol_learning_rate_milestones() -> None:
    from xaiclip_cli.train.trainer import _scheduler

    s, _ = apply_protocol(TrainSettings(data={"source": "medmnist:pathmnist"}, experiment={"protocol": "medmnist"}))
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=s.training.learning_rate)
    sched = _scheduler(s, opt)
    lrs = {}
    for epoch in range(1, 100):  # the trainer steps after each finished epoch with the count of epochs done
        sched.step(epoch, 0.0)
        lrs[epoch] = opt.param_groups[0]["lr"]
    assert lrs[49] == pytest.approx(1e-3) and lrs[50] == pytest.approx(1e-4)
    assert lrs[74] == pytest.approx(1e-4) and lrs[75] == pytest.approx(1e-5) and lrs[99] == pytest.approx(1e-5)


@pytest.fixture()
def npz_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 16), ("val", 6), ("test", 8)):
        labels = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1)
        images = rng.integers(0, 80, (n, 28, 28)).astype(np.uint8)
        images[labels[:, 0] == 1, 8:20, 8:20] = 200
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    root = tmp_path / "medmnist"
    root.mkdir()
    np.savez_compressed(root / "pneumoniamnist.npz", **arrays)
    return root


def test_repeats_cli_writes_mean_and_skips_finished(npz_root: Path, tmp_path: Path) -> None:
    args = ["train", "fit", "--data", "medmnist:pneumoniamnist", "--data-root", str(npz_root), "--protocol",
            "medmnist", "--repeats", "2", "--model", "test_resnet", "--epochs", "1", "--batch-size", "8",
            "--device", "cpu", "--num-workers", "0", "--threads", "1", "--output-dir", str(tmp_path / "runs"),
            "--name", "p", "--best-hparams-dir", "", "--report-to", "none", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["protocol"] == "medmnist" and out["epochs_run"] == 2
    rows = list(csv.DictReader((tmp_path / "runs" / "p" / "repeats.csv").open()))
    assert [r["repeat"] for r in rows] == ["1", "2", "mean", "std"] and [r["seed"] for r in rows[:2]] == ["42", "43"]
    aucs = [float(r["test_auc"]) for r in rows[:2]]
    assert float(rows[2]["test_auc"]) == pytest.approx(np.mean(aucs))
    assert float(rows[3]["test_auc"]) == pytest.approx(np.std(aucs))
    assert out["test"][0]["auc"] == pytest.approx(np.mean(aucs))
    ck = torch.load(tmp_path / "runs" / "p" / "rep1" / "checkpoints" / "best.pt", weights_only=True)
    assert (ck["meta"]["cifar_stem"], ck["meta"]["interpolation"], ck["meta"]["in_chans"]) == (True, "nearest", 3)
    model, _ = model_from_checkpoint(ck)  # rebuilt with the CIFAR stem: the weights load strictly
    assert model.conv1[0].stride == (1, 1)
    results = json.loads((tmp_path / "runs" / "p" / "rep1" / "results.json").read_text())
    assert results["protocol"] == "medmnist"
    before = (tmp_path / "runs" / "p" / "rep2" / "results.json").stat().st_mtime_ns
    again = runner.invoke(app, args)  # finished repeats are skipped, not retrained
    assert again.exit_code == 0 and (tmp_path / "runs" / "p" / "rep2" / "results.json").stat().st_mtime_ns == before
    bad = runner.invoke(app, [*args[:-1], "--resume", str(tmp_path / "runs" / "p" / "rep1")])
    assert bad.exit_code == 2 and "--repeats" in bad.stderr
