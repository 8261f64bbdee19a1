"""The `xaiclip eval` command group."""

from __future__ import annotations

from xaiclip_cli.cli.app import group_app

app = group_app("Score explanations: insertion/deletion AUC, MuFidelity, localisation, zero-shot and probe scores.")
