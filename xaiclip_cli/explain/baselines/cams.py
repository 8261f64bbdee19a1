"""Grad-CAM and Score-CAM baselines through the `cam` engine, explaining the probability at the given logit scale.

The `cam` code scores with the backend's own scale; here a thin proxy replaces only ``score`` (and ``logit_scale``)
so the engine, its layer auto-detection (last spatial layer with a gradient, found once per model, input size and
layer option, like CamRunner) and its map registration are reused unchanged. Score-CAM there already matches
smdl.md §10 (per-channel min-max to [0,1], forwards of ``score_batch`` = 16, softmax over channel scores); its
masked inputs are x̃ ⊙ mask, i.e. the removed part is 0 in normalised space (the mean colour, as
pytorch-grad-cam), not black.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from xaiclip_cli.explain.cam.engine import compute_maps, upsample_maps
from xaiclip_cli.explain.layers import LayerInfo, choose_layer, describe_layer, scan_layers
from xaiclip_cli.explain.registration import CellGeometry, receptive_field_centres
from xaiclip_cli.models.base import score_features


class ScaledBackend:
    """A ClipBackend seen with another logit scale and bias: every attribute but the scores is the backend's."""

    def __init__(self, backend: Any, logit_scale: float, logit_bias: float = 0.0) -> None:
        self._backend = backend
        self._scale = float(logit_scale)
        self._bias = float(logit_bias)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    @property
    def logit_scale(self) -> float:
        """The scale the baseline explains."""
        return self._scale

    @property
    def logit_bias(self) -> float:
        """The bias the baseline explains."""
        return self._bias

    def score(self, image_global: torch.Tensor, text_global: torch.Tensor, kind: str = "logit") -> torch.Tensor:
        """Scores with this scale and bias (same formula as ClipBackend.score)."""
        return score_features(image_global, text_global, kind, self._scale, self._bias)  # type: ignore[arg-type]


def cam_layer(backend: Any, x: torch.Tensor, T: torch.Tensor, target: int, kind: str, layer: str | None) -> LayerInfo:
    """The named layer, or the cam auto-detection on the first image (as CamRunner.resolve_layer)."""
    if layer:
        return describe_layer(backend, layer, x[:1])

    def objective(g: torch.Tensor) -> torch.Tensor:
        return backend.score(g, T, kind)[:, target]

    return choose_layer(scan_layers(backend, x[:1], objective))


# vision module → {(input size, layer option, score kind): (layer, geometry)}: as CamRunner, the layer is found once
# (on the first image explained) and reused; weak keys so a dropped model frees its entry.
_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layer_and_geometry(proxy: Any, x: torch.Tensor, T: torch.Tensor, target: int, kind: str, layer: str | None,
                        align: str) -> tuple[LayerInfo, CellGeometry | None]:
    size = (int(x.shape[-2]), int(x.shape[-1]))
    cache = _LAYERS.setdefault(proxy.vision_module(), {})
    key = (size, layer, kind, align)
    if key not in cache:
        info = cam_layer(proxy, x, T, target, kind, layer)
        geometry = None
        if align == "receptive-field" and info.layout == "NCHW":
            geometry = receptive_field_centres(proxy, info, size)
        cache[key] = (info, geometry)
    return cache[key]


def cam_maps(backend: Any, method: str, x: torch.Tensor, targets: list[int], T: torch.Tensor, logit_scale: float,
             family: str, logit_bias: float = 0.0, *, layer: str | None = None, score_batch: int = 16,
             align: str = "receptive-field") -> tuple[torch.Tensor, LayerInfo]:
    """(maps [B,H,W] after ReLU and upsampling, unnormalised; the layer used) of gradcam or scorecam."""
    proxy = ScaledBackend(backend, logit_scale, logit_bias if family == "sigmoid" else 0.0)
    kind = "sigmoid" if family == "sigmoid" else "softmax"
    T = T.to(backend.device, torch.float32)
    info, geometry = _layer_and_geometry(proxy, x, T, targets[0], kind, layer, align)
    bm = compute_maps(proxy, x, T, targets, method, info, kind, score_batch=score_batch)  # type: ignore[arg-type]
    size = (int(x.shape[-2]), int(x.shape[-1]))
    return upsample_maps(bm.raw, size, geometry=geometry), info
