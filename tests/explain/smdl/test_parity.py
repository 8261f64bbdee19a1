"""smdl.md §14 parity: exact and bidirectional search equal the reference-style oracle on the tiny CLIP.

Three scikit-image images (chelsea, immunohistochemistry, retina) at 224 px, SLICO region size 60 (≈14–16 regions),
RGB and --bgr-compat: same order, curves |Δ| = 0 with full batches and ≤ 1e-6 with max_batch 7, forwards
n + 1 + n(n+1), recorded AUCs equal the oracle evaluator on the export to 1e-9.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

from tests.explain.smdl.tiny_clip import TinyHFClip, random_prototypes, tiny_clip_model, unit_image_features
from tests.oracle.smdl_ref import RefSMDL, ref_recorded_auc, ref_regions
from xaiclip_cli.explain.smdl import (
    ClipScorer,
    SmdlConfig,
    attribute,
    divide,
    elements,
    export_reference,
    load_npz,
    prepare,
    recorded_auc,
    save_npz,
)

CURVES = ("confidence", "effectiveness", "consistency", "collaboration", "objective")
IMAGES = ("chelsea", "immunohistochemistry", "retina")


@pytest.fixture(scope="module")
def tiny():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    model = tiny_clip_model()
    protos = random_prototypes(model)
    yield model, protos, TinyHFClip(model)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(prev)


def _image(name: str) -> np.ndarray:
    import skimage.data

    rgb = getattr(skimage.data, name)()
    return cv2.resize(np.ascontiguousarray(rgb[:, :, ::-1]), (224, 224), interpolation=cv2.INTER_LINEAR)


def _max_diff(r, o) -> float:
    return max(float(np.abs(getattr(r, k) - np.asarray(o[k], np.float32)).max()) for k in CURVES)


@pytest.mark.parametrize("bgr_compat", [False, True], ids=["rgb", "bgr-compat"])
@pytest.mark.parametrize("name", IMAGES)
def test_exact_and_bidirectional_equal_the_oracle(tiny, tmp_path, name: str, bgr_compat: bool) -> None:
    model, protos, backend = tiny
    bgr = _image(name)
    labels = divide(bgr, "slico", region_size=60)
    ids, masks = elements(labels)
    n = len(ids)
    assert 10 <= n <= 20
    scorer = ClipScorer(backend, protos, 10.0)
    x, b = prepare(backend, bgr, bgr_compat=bgr_compat)
    target = int(scorer.probs(x[None])[0].argmax())
    nb = bgr.astype(np.int32).sum(2) != 0
    mt = torch.from_numpy(masks)
    ref = RefSMDL(unit_image_features(model), protos, 10.0, bgr_compat=bgr_compat)
    regions = ref_regions(bgr, labels, ids)

    r = attribute(scorer, x, b, mt, target, SmdlConfig(), nb)
    o = ref.exact(regions, target)
    assert r.order.tolist() == o["order"]
    assert _max_diff(r, o) == 0.0
    assert r.forwards == o["forwards"] == n + 1 + n * (n + 1)
    assert r.p_full == o["p_full"]

    if not bgr_compat:  # batch caps do not depend on the colour order: checked once per image
        r7 = attribute(scorer, x, b, mt, target, SmdlConfig(max_batch=7), nb)
        assert r7.order.tolist() == o["order"]
        assert _max_diff(r7, o) <= 1e-6

    rb = attribute(scorer, x, b, mt, target, SmdlConfig(search="bidirectional"), nb)
    ob = ref.bidirectional(regions, target)
    assert rb.order.tolist() == ob["order"]
    assert _max_diff(rb, ob) == 0.0
    assert rb.front_len == ob["front_len"] and rb.forwards == ob["forwards"]
    for side in ("increase", "decrease"):
        np.testing.assert_array_equal(rb.extra[f"consistency_{side}"], np.float32(ob[side]["consistency"]))

    # Recorded AUC from the compact npz equals the oracle evaluator on the reference export (1e-9).
    for res, pending in ((r, None), (rb, 8)):
        res.order = ids[res.order.astype(np.int64)].astype(np.int16)
        save_npz(tmp_path / "r.npz", labels, res)
        ins, dele = recorded_auc(load_npz(tmp_path / "r.npz"))
        npy, js = export_reference(tmp_path / "exp", "slico", (0.0, 0.05, 1.0, 1.0), pending, "t", name, bgr,
                                   labels, res)
        ref_ins, ref_del = ref_recorded_auc(npy, js)
        assert abs(ins - ref_ins) <= 1e-9 and abs(dele - ref_del) <= 1e-9
        assert 0 < ins < 1 and 0 < dele < 1


@pytest.mark.skipif(not os.environ.get("SMDL_REF_DIR"), reason="SMDL_REF_DIR (a local reference checkout) not set")
def test_reference_checkout_classes_import() -> None:
    """With a local reference checkout the oracle's numbers could be compared with its classes (not vendored)."""
    import sys

    sys.path.insert(0, os.environ["SMDL_REF_DIR"])
    mod = pytest.importorskip("models.submodular_vit_torch")
    assert hasattr(mod, "__file__")
