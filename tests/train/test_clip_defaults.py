"""train clip for a newcomer: no arguments = the shipped toy-vit recipe, shipped configs by name from any folder,
and a rerun of the recipe is deterministic (identical weights at one thread) with the shipped data's fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from xaiclip_cli.cli.main import app
from xaiclip_cli.data.npz import file_md5
from xaiclip_cli.resources import resource_dir

runner = CliRunner()


def _config(args: list[str]) -> dict:
    r = runner.invoke(app, ["train", "clip", *args, "--print-config"])
    assert r.exit_code == 0, r.output
    return yaml.safe_load(r.stdout)["train"]


def test_no_arguments_use_the_embedded_toy_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # not the repository root
    s = _config([])
    shipped = yaml.safe_load(Path(__file__).parents[2].joinpath("configs", "toy-vit.yaml").read_text())["train"]
    assert s["image_model"] == shipped["image_model"] == "vit_base_patch16_224"
    assert s["image_kwargs"] == shipped["image_kwargs"] and s["image_size"] == 64 and s["epochs"] == 20
    assert s["name"] is None  # timestamped: two default runs never share a run dir
    assert _config(["--epochs", "2"])["epochs"] == 2  # flags still win
    own = _config(["--image-model", "resnet18"])  # another tower: the ViT's kwargs are dropped, not forced on it
    assert own["image_model"] == "resnet18" and own["image_kwargs"] == {} and own["image_size"] == 64
    monkeypatch.setenv("XAICLIP_TRAIN__IMAGE_MODEL", "resnet18")
    assert _config([])["image_kwargs"] == {}


@pytest.mark.parametrize("ref", ["toy-vit", "toy-vit.yaml", "configs/toy-vit.yaml"])
def test_shipped_configs_resolve_by_name_from_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       ref: str) -> None:
    monkeypatch.chdir(tmp_path)
    s = _config(["--config", ref])
    assert s["name"] == "toy-vit" and s["image_kwargs"]["patch_size"] == 8
    assert _config(["--config", "toy-cnn"])["image_model"] == "resnet10t"
    r = runner.invoke(app, ["train", "clip", "--config", "toy-vitt", "--print-config"])
    assert r.exit_code == 2 and "toy-vit" in r.stderr and "toy-vitt" in r.stderr


def test_a_user_file_wins_over_a_shipped_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy-vit").write_text("train:\n  epochs: 3\n")
    assert _config(["--config", "toy-vit"])["epochs"] == 3


def _short_run(tmp_path: Path, name: str) -> tuple[bytes, dict]:
    r = runner.invoke(app, ["train", "clip", "--config", "toy-vit", "--name", name, "--output-dir",
                            str(tmp_path / "runs"), "--epochs", "1", "--max-train-samples", "16",
                            "--max-eval-samples", "8", "--batch-size", "8", "--threads", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["best_epoch"] == 1  # 8 val images miss a class: AUC is NaN, the last epoch exports
    export = tmp_path / "runs" / name / "export"
    return (export / "model.safetensors").read_bytes(), json.loads((export / "xaiclip_clip.json").read_text())


def test_rerun_of_the_recipe_is_identical_and_fingerprints_the_shipped_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the config's prompt set (configs/toycells.yaml) resolves from here too
    ref_weights, ref_meta = _short_run(tmp_path, "reference")
    weights, meta = _short_run(tmp_path, "rerun")
    assert weights == ref_weights  # bit-identical at one thread
    shipped = resource_dir("toycells", "toycells_64.npz")
    assert meta["trained_on"]["md5"] == file_md5(shipped) == ref_meta["trained_on"]["md5"]
    assert meta["trained_on"]["data_sha256"] == ref_meta["trained_on"]["data_sha256"]
    assert len(meta["trained_on"]["data_sha256"]) == 64
