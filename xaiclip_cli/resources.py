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


def config_path(name: str) -> Path:
    """Return a shipped config file by name (``toycells.yaml``) or the path itself when it exists."""
    p = Path(name)
    if p.exists():
        return p
    cand = configs_dir() / name
    if cand.suffix == "":
        cand = cand.with_suffix(".yaml")
    return cand


def resource_dir(*parts: str) -> Path:
    """Return a folder under ``xaiclip_cli/resources`` (shipped toy weights and data)."""
    return _PKG.joinpath("resources", *parts)
