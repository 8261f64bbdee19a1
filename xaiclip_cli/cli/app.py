"""Factory for the group Typer apps, so every group shares the same help and error settings."""

from __future__ import annotations

import typer


def group_app(help_text: str) -> typer.Typer:
    """A Typer app for one command group (no markup parsing in help: '[default: x]' stays literal)."""
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False)
