"""The `xaiclip cam` command group."""

from __future__ import annotations

from xaiclip_cli.cli.app import group_app

app = group_app("Grad-CAM-family heatmaps of image-text alignment for CNN and ViT/SigLIP image towers.")
