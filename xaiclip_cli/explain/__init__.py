"""Explanations of CLIP-style models: CAM heatmaps (``explain``/``save``), target layers and score targets."""

from __future__ import annotations

from xaiclip_cli.explain.api import CamResult, CamRunner, explain, save, save_result, visualize_clip_gradcam
from xaiclip_cli.explain.cam import METHOD_NAMES, METHODS
from xaiclip_cli.explain.layers import LayerInfo, choose_layer, reshape_tokens, scan_layers

__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "CamResult",
    "CamRunner",
    "LayerInfo",
    "choose_layer",
    "explain",
    "reshape_tokens",
    "save",
    "save_result",
    "scan_layers",
    "visualize_clip_gradcam",
]
