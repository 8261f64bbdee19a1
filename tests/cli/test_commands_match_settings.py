"""Walk every command of every group: its options and its settings model must agree, both ways."""

from __future__ import annotations

import typer
import typer.main

from xaiclip_cli.cli.command import COMMON_OPTIONS, field_info, leaf_fields, option_name
from xaiclip_cli.cli.main import app

GROUPS = ("store", "db", "cam", "attrib", "eval", "train")


def all_commands() -> list[tuple[str, typer.core.TyperCommand]]:
    root = typer.main.get_command(app)
    assert hasattr(root, "commands")
    out = []
    for gname in GROUPS:
        group = root.commands[gname]
        assert hasattr(group, "commands")
        for cname, cmd in group.commands.items():
            out.append((f"{gname} {cname}", cmd))
    return out


def test_root_lists_the_six_groups() -> None:
    root = typer.main.get_command(app)
    assert hasattr(root, "commands")
    assert list(root.commands) == list(GROUPS)


def test_every_option_is_a_field_and_every_field_reachable() -> None:
    reachable: dict[type, set[str]] = {}
    for label, cmd in all_commands():
        cb = cmd.callback
        model = getattr(cb, "xaiclip_model", None)
        assert model is not None, f"{label}: not built with settings_command"
        fields = cb.xaiclip_fields
        names = {p.name for p in cmd.params}
        for path in fields:
            info = field_info(model, path)
            assert path.replace(".", "__") in names, f"{label}: field {path} has no option"
            flag = f"--{option_name(path, info)}"
            param = next(p for p in cmd.params if p.name == path.replace(".", "__"))
            if getattr(param, "param_type_name", "") == "option":
                assert any(o.split("/")[0] == flag for o in param.opts), f"{label}: {path} is not {flag}"
        for p in cmd.params:
            if p.name in COMMON_OPTIONS or p.name == "help":
                continue
            assert p.name.replace("__", ".") in fields, f"{label}: option {p.name} is not a field of {model.__name__}"
        reachable.setdefault(model, set()).update(fields)
    for model, seen in reachable.items():
        missing = set(leaf_fields(model)) - seen
        assert not missing, f"{model.__name__}: fields no command exposes: {sorted(missing)}"
        for name in COMMON_OPTIONS:
            assert name not in model.model_fields, f"{model.__name__}.{name} collides with a common option"


def test_every_group_and_command_has_help() -> None:
    from typer.testing import CliRunner

    runner = CliRunner()
    for gname in GROUPS:
        r = runner.invoke(app, [gname, "--help"])
        assert r.exit_code == 0, r.output
    for label, cmd in all_commands():
        assert (cmd.help or "").strip(), f"{label} has no help text"
        r = runner.invoke(app, [*label.split(), "--help"])
        assert r.exit_code == 0, f"{label}: {r.output}"
