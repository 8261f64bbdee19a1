"""The `xaiclip db` command group."""

from __future__ import annotations

from xaiclip_cli.cli.app import group_app

app = group_app("Read a feature library: summarize, tree, sample, batch, templates, fetch, clear, verify.")
