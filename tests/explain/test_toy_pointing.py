"""Sanity check on the shipped toy models: Grad-CAM puts more map energy in the mask than a uniform map would."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xaiclip_cli.errors import XaiclipError


@pytest.mark.slow
@pytest.mark.parametrize("name", ["toy-cnn", "toy-vit"])
def test_gradcam_on_toy_model_beats_mask_area_baseline(name: str) -> None:
    from xaiclip_cli.data.toycells import TOYCELLS_CAPTIONS, TOYCELLS_CLASSES, ToyCellsSource
    from xaiclip_cli.explain.api import CamRunner
    from xaiclip_cli.explain.cam.engine import compute_maps, upsample_maps
    from xaiclip_cli.models.registry import load_backend

    try:
        toy = load_backend("toy", name, device="cpu")
    except (XaiclipError, ImportError) as exc:
        pytest.skip(f"{name} not available: {exc}")

    samples = ToyCellsSource().get_many("test", list(range(20)))
    masks = np.stack([(s.mask > 0).astype(np.float32) for s in samples])
    runner = CamRunner(toy, {c: TOYCELLS_CAPTIONS[c][0] for c in TOYCELLS_CLASSES})
    pixels = runner.pixels([s.image for s in samples])
    layer = runner.resolve_layer(pixels)
    bm = compute_maps(toy, pixels, runner.text_global, torch.tensor([s.label for s in samples]), "gradcam", layer)
    maps = F.interpolate(upsample_maps(bm.raw, tuple(pixels.shape[-2:]))[:, None], size=masks.shape[-2:],
                         mode="bilinear", align_corners=False)[:, 0].clamp(min=0).numpy()
    energy = (maps * masks).sum((1, 2)) / np.maximum(maps.sum((1, 2)), 1e-12)
    assert energy.mean() > masks.mean((1, 2)).mean()
