"""The `xaiclip train` command group."""

from __future__ import annotations

from xaiclip_cli.cli.app import group_app

app = group_app("Patient-level splits, classifier fine-tuning, per-patient features, fusion and CLIP training.")
