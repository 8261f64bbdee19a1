"""On the shipped toy models and toy cells, SMDL's first regions fall on the target cell (attrib_mask_share.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xaiclip_cli.data.prompts import load_prompt_set
from xaiclip_cli.data.refs import open_source
from xaiclip_cli.explain.smdl import ClipScorer, SmdlConfig, attribute_image, text_prototypes
from xaiclip_cli.metrics.localization import first_regions_share
from xaiclip_cli.models.registry import load_backend

K = 5
IMAGES = 6


def _shares(model: str, fill: str) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """first_regions_share at k = 1 and k = K of exact SMDL (k = K steps) on the first test images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        backend = load_backend("toy", model, device="cpu")
        ps = load_prompt_set("toycells")
        protos = text_prototypes(backend, [[t.format(lab) for t in ps.label_templates] for lab in ps.labels])
        scorer = ClipScorer(backend, protos, backend.logit_scale)
        src = open_source("toycells")
        one, five = [], []
        for i in range(IMAGES):
            s = src.get("test", i)
            bgr = np.ascontiguousarray(s.image[:, :, ::-1])
            labels, r = attribute_image(scorer, backend, bgr, int(s.label), {"mode": "slico"}, SmdlConfig(k=K),
                                        fill=fill)
            assert 40 <= len(np.unique(labels)) <= 56  # region size auto = 9 at 64 px → ≈49 regions
            one.append(first_regions_share(labels, r.order, s.mask, 1))
            five.append(first_regions_share(labels, r.order, s.mask, K))
    finally:
        torch.set_num_threads(threads)
    return one, five


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return float(np.mean([d[key] for d in rows]))


@pytest.mark.parametrize("model", ["toy-vit", "toy-cnn"])
def test_first_regions_lie_on_the_target_cell(model: str) -> None:
    # benchmarks/attrib_mask_share.py (20 images, exact): with --fill blur the first five regions lie mostly inside the
    # cell mask; with the reference's black fill only the first region does (0.62 toy-vit, 0.60 toy-cnn, chance =
    # the mask's area share 0.20) and the first five sit at 1.9× / 1.7× chance. On these six images (blur, first five:
    # 0.77 / 0.74; black, first region 0.62 / 0.46, first five 0.37 / 0.17 vs chance 0.19) black-fill toy-cnn is at
    # chance after its first region, so only the first region is asserted for black.
    one, five = _shares(model, "blur")
    assert _mean(five, "pixel_share") > 0.5, (model, _mean(five, "pixel_share"))
    assert _mean(five, "region_share") > 0.5
    one_b, _five_b = _shares(model, "black")
    assert _mean(one_b, "pixel_share") >= 2 * _mean(one_b, "area_share"), (model, _mean(one_b, "pixel_share"))
