"""On the shipped toy-vit and toy cells, SMDL's first regions fall on the target cell far above chance."""

from __future__ import annotations

import numpy as np
import torch

from xaiclip_cli.data.prompts import load_prompt_set
from xaiclip_cli.data.refs import open_source
from xaiclip_cli.explain.smdl import ClipScorer, SmdlConfig, attribute_image, text_prototypes
from xaiclip_cli.models.registry import load_backend

K = 5
IMAGES = 6


def test_first_regions_lie_on_the_target_cell() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        backend = load_backend("toy", "toy-vit", device="cpu")
        ps = load_prompt_set("toycells")
        protos = text_prototypes(backend, [[t.format(lab) for t in ps.label_templates] for lab in ps.labels])
        scorer = ClipScorer(backend, protos, backend.logit_scale)
        src = open_source("toycells")
        inside, area = [], []
        for i in range(IMAGES):
            s = src.get("test", i)
            bgr = np.ascontiguousarray(s.image[:, :, ::-1])
            labels, r = attribute_image(scorer, backend, bgr, int(s.label), {"mode": "slico"}, SmdlConfig(k=K))
            assert 40 <= len(np.unique(labels)) <= 56  # region size auto = 9 at 64 px → ≈49 regions
            sel = np.isin(labels, r.order[:K])
            m = s.mask.astype(bool)
            inside.append((sel & m).sum() / sel.sum())
            area.append(m.mean())
    finally:
        torch.set_num_threads(threads)
    # Measured (first 6 test images, exact, k = 5): 0.369 of the selected pixels inside the cell mask vs a mask
    # area share of 0.195 (1.89× chance; 0.377 vs 0.202 on 10 images). The margin asserted is 1.5×.
    assert np.mean(inside) >= 1.5 * np.mean(area), (np.mean(inside), np.mean(area))
