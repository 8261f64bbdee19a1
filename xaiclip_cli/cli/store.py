"""The `xaiclip store` command group."""

from __future__ import annotations

from xaiclip_cli.cli.app import group_app

app = group_app("Encode prompts and images with a CLIP-style model into an HDF5 feature library.")
