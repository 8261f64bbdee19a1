"""Locate files shipped with xaiclip: the configs/ folder and package resources (toy models, toy data)."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def configs_dir() -> Path:
    """Return the shipped ``configs/`` folder (inside the wheel, or the repository root for editable installs)."""
    inside = _PKG / "_configs"
    if inside.is_dir():
        return inside
    return _PKG.parent / "configs"


def config_path(name: str | Path) -> Path:
    """Return a shipped config file by name (``toy-vit``, ``toycells.yaml``, ``configs/toy-vit.yaml``) from any
    folder, or the path itself when it exists (a user's file wins over a shipped one of the same name)."""
    p = Path(name).expanduser()
    if p.exists():
        return p
    for cand in (configs_dir() / p, configs_dir() / p.name):  # 'configs/x.yaml' as the README writes it
        if cand.suffix == "":
            cand = cand.with_suffix(".yaml")
        if cand.is_file():
            return cand
    cand = configs_dir() / p.name
    return cand if cand.suffix else cand.with_suffix(".yaml")


def shipped_configs() -> list[str]:
    """Names of the shipped config files (``toy-vit``, ``toycells``, ...)."""
    return sorted(p.stem for p in configs_dir().glob("*.yaml"))


def resource_dir(*parts: str) -> Path:
    """Return a folder under ``xaiclip_cli/resources`` (shipped toy weights and data)."""
    return _PKG.joinpath("resources", *parts)
