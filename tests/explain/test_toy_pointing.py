"""Localisation on the shipped toy models: most of each map's energy lies inside the target cell's mask.

Energy pointing game (metrics.md §5: ReLU'd map, upsampled, min-max scaled; Σ inside / Σ all) over the first 50
toy-cells test images, each explained for its true class's caption; a uniform map scores the mask area, 0.19.
Maps are placed as `cam run` places them (CNN cells at their measured receptive-field centres). toy-cnn is
average-pooled: with ``--score dot`` every gradient method localises; with the default logit its Grad-CAM map sums to
zero (0.26 lands in the cells), so only layercam, gradcam++ and eigencam are held to it. toy-vit (attention-pooled)
uses the default logit. The full per-method table is `benchmarks/cam_pointing_game.py`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

CASES = [
    ("toy-cnn", "dot", ["gradcam", "hirescam", "layercam", "xgradcam", "gradcam++", "eigencam"]),
    ("toy-cnn", "logit", ["layercam", "gradcam++", "eigencam"]),
    ("toy-vit", "logit", ["hirescam", "layercam", "eigencam"]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "score", "methods"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_most_map_energy_lies_inside_the_cell(name: str, score: str, methods: list[str]) -> None:
    from xaiclip_cli.data.toycells import TOYCELLS_CAPTIONS, TOYCELLS_CLASSES, ToyCellsSource
    from xaiclip_cli.explain.api import CamRunner
    from xaiclip_cli.explain.cam.engine import compute_maps, minmax, upsample_maps
    from xaiclip_cli.models.registry import load_backend

    toy = load_backend("toy", name, device="cpu")
    samples = ToyCellsSource().get_many("test", list(range(50)))
    masks = np.stack([(s.mask > 0).astype(np.float32) for s in samples])
    area = float(masks.mean())
    runner = CamRunner(toy, {c: TOYCELLS_CAPTIONS[c][0] for c in TOYCELLS_CLASSES}, score=score)
    pixels = runner.pixels([s.image for s in samples])
    layer = runner.resolve_layer(pixels)
    labels = torch.tensor([s.label for s in samples])
    energy = {}
    for method in methods:
        bm = compute_maps(toy, pixels, runner.text_global, labels, method, layer, score)
        size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        up = upsample_maps(bm.raw, size, geometry=runner.geometry(layer, size))
        up = F.interpolate(up[:, None], size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        m = minmax(up.clamp(min=0)).numpy()
        energy[method] = float(((m * masks).sum((1, 2)) / np.maximum(m.sum((1, 2)), 1e-12)).mean())
    assert 0.15 < area < 0.25
    assert all(e > 0.55 for e in energy.values()), energy  # most energy inside; chance is the area (0.19)
