"""Settings precedence: flags > XAICLIP_<GROUP>__<FIELD> env > --config YAML > defaults, layer against layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.cli.demo_app import DemoSettings, app
from xaiclip_cli.config.base import dump_yaml, load_yaml_layer, parse_set_overrides, resolve_settings, split_list
from xaiclip_cli.errors import UsageError

runner = CliRunner()


@pytest.fixture(autouse=True)
def eight_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Layering, not hardware: --gpus lists pass the device check as if this machine had 8 GPUs."""
    import xaiclip_cli.devices as devices

    monkeypatch.setattr(devices, "_cuda_state", lambda: (8, ""))


def lr_of(args: list[str], env: dict[str, str] | None = None) -> float:
    r = runner.invoke(app, ["run", "--json", *args], env=env)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["lr"]


@pytest.fixture()
def yaml_file(tmp_path: Path) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text("attrib:\n  optim:\n    lr: 0.2\n  gpus: [3]\n")
    return p


def test_default_only() -> None:
    assert lr_of([]) == 1e-3


def test_yaml_over_default(yaml_file: Path) -> None:
    assert lr_of(["--config", str(yaml_file)]) == 0.2


def test_env_over_yaml(yaml_file: Path) -> None:
    assert lr_of(["--config", str(yaml_file)], env={"XAICLIP_ATTRIB__OPTIM__LR": "0.3"}) == 0.3


def test_flag_over_env_and_yaml(yaml_file: Path) -> None:
    assert lr_of(["--config", str(yaml_file), "--lr", "0.4"], env={"XAICLIP_ATTRIB__OPTIM__LR": "0.3"}) == 0.4


def test_set_acts_as_flag(yaml_file: Path) -> None:
    assert lr_of(["--config", str(yaml_file), "--set", "optim.lr=0.5"], env={"XAICLIP_ATTRIB__OPTIM__LR": "0.3"}) == 0.5


def test_flag_over_env_without_yaml() -> None:
    assert lr_of(["--lr", "0.6"], env={"XAICLIP_ATTRIB__OPTIM__LR": "0.3"}) == 0.6


def test_env_lists_parse() -> None:
    r = runner.invoke(app, ["run", "--json"], env={"XAICLIP_ATTRIB__GPUS": "0,1"})
    assert json.loads(r.stdout)["gpus"] == [0, 1]
    r = runner.invoke(app, ["run", "--json"], env={"XAICLIP_ATTRIB__GPUS": "[2, 3]"})
    assert json.loads(r.stdout)["gpus"] == [2, 3]


def test_yaml_list_and_flag_list(yaml_file: Path) -> None:
    r = runner.invoke(app, ["run", "--json", "--config", str(yaml_file)])
    assert json.loads(r.stdout)["gpus"] == [3]
    r = runner.invoke(app, ["run", "--json", "--config", str(yaml_file), "--gpus", "0,1"])
    assert json.loads(r.stdout)["gpus"] == [0, 1]


def test_print_config_is_loadable_yaml(tmp_path: Path, yaml_file: Path) -> None:
    r = runner.invoke(app, ["run", "--print-config", "--config", str(yaml_file), "--seed", "7"],
                      env={"XAICLIP_ATTRIB__OPTIM__BATCH_SIZE": "5"})
    assert r.exit_code == 0
    out = tmp_path / "resolved.yaml"
    out.write_text(r.stdout)
    s = resolve_settings(DemoSettings, {}, out)
    assert (s.seed, s.optim.lr, s.optim.batch_size, s.gpus) == (7, 0.2, 5, [3])
    assert not (tmp_path / "config.yaml").exists()  # --print-config runs nothing


def test_flat_yaml_without_section(tmp_path: Path) -> None:
    p = tmp_path / "flat.yaml"
    p.write_text("seed: 11\n")
    assert resolve_settings(DemoSettings, {}, p).seed == 11


def test_yaml_other_group_sections_ignored(tmp_path: Path) -> None:
    p = tmp_path / "all.yaml"
    p.write_text("store:\n  h5: x.h5\nattrib:\n  seed: 12\n")
    assert resolve_settings(DemoSettings, {}, p).seed == 12


@pytest.mark.parametrize(
    ("content", "needle"),
    [("attrib:\n  sed: 1\n", "'sed': unknown setting"), ("seed: [unclosed\n", "invalid YAML (line"),
     ("- a\n- b\n", "expected a mapping"), ("attrib:\n  seed: notanint\n", "'seed'"),
     ("store: {}\nseed: 1\n", "mixes group sections")],
)
def test_bad_yaml_files(tmp_path: Path, content: str, needle: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(content)
    with pytest.raises(UsageError) as e:
        resolve_settings(DemoSettings, {}, p)
    assert needle in str(e.value)
    assert str(p) in str(e.value)


def test_missing_config_file_exit_2(tmp_path: Path) -> None:
    r = runner.invoke(app, ["run", "--config", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2
    assert "config file not found" in r.stderr


def test_bad_env_value_exit_2() -> None:
    r = runner.invoke(app, ["run"], env={"XAICLIP_ATTRIB__SEED": "abc"})
    assert r.exit_code == 2 and "'seed'" in r.stderr


def test_set_parsing() -> None:
    assert parse_set_overrides(["a.b=1", "c=true", "d=[1, 2]", "e=x,y"]) == {
        "a": {"b": 1}, "c": True, "d": [1, 2], "e": "x,y"}
    with pytest.raises(UsageError):
        parse_set_overrides(["novalue"])


def test_split_list() -> None:
    assert split_list("0, 1") == ["0", "1"]
    assert split_list("") == []
    assert split_list([1]) == [1]


def test_dump_yaml_round_trip(tmp_path: Path) -> None:
    s = resolve_settings(DemoSettings, {"seed": 3, "optim": {"lr": 0.01}})
    p = tmp_path / "x.yaml"
    p.write_text(dump_yaml(s))
    assert load_yaml_layer(p, "attrib")["optim"]["lr"] == 0.01
    assert resolve_settings(DemoSettings, {}, p) == s
