"""On the shipped toy models and toy cells, SMDL's first regions fall on the target cell (benchmarks/attrib_mask_share.py)."""

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
    # benchmarks/attrib_mask_share.py (20 images): with --fill blur the first five regions lie mostly inside the cell
    # mask (pixel share 0.72 toy-vit, 0.80 toy-cnn); with the reference's black fill only the first region does
    # (0.62, 0.60) and the first five sit at 1.7–1.9× chance (the mask's area share, 0.20). On these six images the
    # black-fill first region is 0.46 for toy-cnn, so the black assertions are relative to chance.
    one, five = _shares(model, "blur")
    assert _mean(five, "pixel_share") > 0.5, (model, _mean(five, "pixel_share"))
    assert _mean(five, "region_share") > 0.5
    one_b, five_b = _shares(model, "black")
    assert _mean(one_b, "pixel_share") >= 2 * _mean(one_b, "area_share"), (model, _mean(one_b, "pixel_share"))
    assert _mean(five_b, "pixel_share") >= 1.5 * _mean(five_b, "area_share"), (model, _mean(five_b, "pixel_share"))
