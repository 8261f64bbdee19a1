"""CLI tests of the `xaiclip train` group: options vs settings, precedence, aliases, bad inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from xaiclip_cli.cli import train as train_cli
from xaiclip_cli.cli.command import leaf_fields
from xaiclip_cli.cli.main import app
from xaiclip_cli.config.train import TrainSettings

runner = CliRunner()


def _cfg(args: list[str], env: dict[str, str] | None = None) -> dict:
    res = runner.invoke(app, ["train", "fit", *args, "--print-config"], env=env)
    assert res.exit_code == 0, res.output
    return yaml.safe_load(res.stdout)["train"]


def test_every_train_field_is_an_option_of_some_command() -> None:
    exposed: set[str] = set()
    for fn in (train_cli.split, train_cli.fit, train_cli.extract, train_cli.fuse, train_cli.show, train_cli.pipeline,
               train_cli.toy_tree):
        assert fn.xaiclip_model is TrainSettings
        exposed.update(fn.xaiclip_fields)
    assert set(leaf_fields(TrainSettings)) - exposed == set()


def test_reference_flags_are_kebab_case() -> None:
    res = runner.invoke(app, ["train", "fit", "--help"], terminal_width=200)
    for flag in ("--batch-size", "--learning-rate", "--loss-type", "--disable-early-stop", "--model", "--data",
                 "--amp", "--model-ema", "--grad-accum-steps", "--clip-grad", "--resume", "--select-metric"):
        assert flag in res.stdout, flag


def test_precedence_flags_env_yaml_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  training:\n    batch_size: 16\n    epochs: 7\n    learning_rate: 0.01\n")
    env = {"XAICLIP_TRAIN__TRAINING__BATCH_SIZE": "32", "XAICLIP_TRAIN__TRAINING__EPOCHS": "9"}
    got = _cfg(["--config", str(cfg), "--batch-size", "8"], env)["training"]
    assert (got["batch_size"], got["epochs"], got["learning_rate"]) == (8, 9, 0.01)
    assert got["weight_decay"] == 1e-4  # default
    assert _cfg(["--config", str(cfg)], env)["training"]["batch_size"] == 32
    assert _cfg(["--config", str(cfg), "--set", "training.loss_type=focal"])["training"]["loss_type"] == "focal"


def test_disable_early_stop_alias_and_lists() -> None:
    assert _cfg([])["training"]["early_stop_enabled"] is True
    assert _cfg(["--disable-early-stop"])["training"]["early_stop_enabled"] is False
    got = _cfg(["--mean", "0.4,0.5,0.6", "--std", "0.2", "--in-chans", "3"])
    assert got["augmentation"]["mean"] == [0.4, 0.5, 0.6] and got["data"]["in_chans"] == 3
    assert _cfg(["--set", "data.modalities=[A,P,T2]"])["data"]["modalities"] == ["A", "P", "T2"]


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path) -> None:
    cases = [
        ["train", "fit", "--set", "training.bogus=1"],
        ["train", "fit", "--data", "imagenet"],
        ["train", "fit", "--mean", "0.1,0.2", "--in-chans", "1"],
        ["train", "fit", "--split-dir", str(tmp_path), "--modality", "A", "--device", "cpu", "--output-dir",
         str(tmp_path / "runs")],
        ["train", "fit", "--split-dir", str(tmp_path), "--device", "cpu", "--output-dir", str(tmp_path / "r")],
        ["train", "fit", "--resume", str(tmp_path / "nothing")],
        ["train", "show", str(tmp_path)],
    ]
    for args in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert len(res.stderr.strip().splitlines()) == 1, (args, res.stderr)


def test_train_help_does_not_import_torch() -> None:
    code = ("import sys; from xaiclip_cli.cli.main import app; import xaiclip_cli.cli.train; "
            "print(any(m in sys.modules for m in ('torch', 'timm', 'sklearn')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
