"""The `xaiclip attrib` command group."""

from __future__ import annotations

from xaiclip_cli.cli.app import group_app

app = group_app("Submodular region attribution (Less is More, ICLR 2024) with GPU and multi-node sharding.")
