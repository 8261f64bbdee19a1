"""Train settings edge cases: an empty best-hparams dir means off, never the current folder."""

from __future__ import annotations

from xaiclip_cli.config.base import resolve_settings
from xaiclip_cli.config.train import TrainSettings


def test_empty_best_hparams_dir_is_off() -> None:
    s = resolve_settings(TrainSettings, {"experiment": {"best_hparams_dir": ""}})
    assert s.experiment.best_hparams_dir is None
    s = resolve_settings(TrainSettings, {}, None)
    assert str(s.experiment.best_hparams_dir) == "config/best_hparams"


def test_env_none_turns_it_off(monkeypatch) -> None:
    monkeypatch.setenv("XAICLIP_TRAIN__EXPERIMENT__BEST_HPARAMS_DIR", "none")
    assert resolve_settings(TrainSettings, {}).experiment.best_hparams_dir is None


def test_empty_path_flag_reaches_the_model_as_text() -> None:
    import yaml
    from typer.testing import CliRunner

    from xaiclip_cli.cli.main import app

    r = CliRunner().invoke(app, ["train", "fit", "--best-hparams-dir", "", "--print-config"])
    assert r.exit_code == 0, r.output
    assert yaml.safe_load(r.stdout)["train"]["experiment"]["best_hparams_dir"] is None
