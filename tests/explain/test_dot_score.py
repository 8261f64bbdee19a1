"""`--score dot`: on an average-pooled CNN with a linear head Grad-CAM equals CAM; the cosine map sums to zero."""

from __future__ import annotations

import torch

from tests.explain import tiny_backends as tb
from xaiclip_cli.explain.cam.engine import compute_maps, embed_and_score
from xaiclip_cli.explain.layers import LayerInfo


def _gap_backend():
    be = tb.timm_backend("resnet18", image_size=32, layers=[1, 1, 1, 1], channels=[8, 8, 16, 16]).to("cpu")
    fc = be.vision.trunk.fc
    with torch.no_grad():
        fc.bias.zero_()  # g = W·GAP(A): degree-1 homogeneous in A, the case the cosine map cancels on
    return be, fc.weight.detach()


def _layer(be, x) -> LayerInfo:
    out = []
    h = be.vision.trunk.layer4.register_forward_hook(lambda m, i, o: out.append(o.detach()))
    with torch.no_grad():
        be.encode_image(x)
    h.remove()
    A = out[0]
    return LayerInfo("trunk.layer4", tuple(A.shape), "NCHW", 0, tuple(A.shape[-2:])), A


def test_gradcam_with_dot_score_is_cam() -> None:
    be, W = _gap_backend()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.nn.functional.normalize(torch.randn(4, W.shape[0], generator=torch.Generator().manual_seed(1)), dim=-1)
    targets = [2, 0, 3]
    layer, A = _layer(be, x)
    bm = compute_maps(be, x, t, targets, "gradcam", layer, "dot")
    hw = A.shape[-1] * A.shape[-2]
    w = t[targets] @ W  # [B, C]: the text direction pulled back through the linear head
    cam = (w[:, :, None, None] * A).sum(1) / hw  # CAM (Zhou et al.) up to the 1/HW of the average pool
    torch.testing.assert_close(bm.raw, cam, atol=1e-5, rtol=1e-4)
    g = be.encode_image_unnormalized(x).detach()
    # Σ_hw of the map is the explained score itself: ⟨g, t̂⟩ (the map decomposes it over positions).
    torch.testing.assert_close(bm.raw.sum((1, 2)), (g * t[targets]).sum(1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bm.target_scores, (g * t[targets]).sum(1), atol=1e-5, rtol=1e-5)


def test_cosine_gradcam_map_sums_to_zero_on_a_homogeneous_tower() -> None:
    be, W = _gap_backend()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    t = torch.nn.functional.normalize(torch.randn(3, W.shape[0], generator=torch.Generator().manual_seed(3)), dim=-1)
    layer, _ = _layer(be, x)
    raw = compute_maps(be, x, t, [1, 2], "gradcam", layer, "cosine").raw
    assert float(raw.abs().sum()) > 0
    torch.testing.assert_close(raw.sum((1, 2)), torch.zeros(2), atol=1e-6, rtol=0)  # ⟨∂s/∂A, A⟩ = 0 (Euler)


def test_dot_ranks_texts_like_the_cosine() -> None:
    be, W = _gap_backend()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    t = torch.nn.functional.normalize(torch.randn(5, W.shape[0], generator=torch.Generator().manual_seed(5)), dim=-1)
    with torch.no_grad():
        g, dot = embed_and_score(be, x, t, "dot")
        _, cos = embed_and_score(be, x, t, "cosine")
    assert torch.equal(dot.argsort(dim=1), cos.argsort(dim=1))
    torch.testing.assert_close(dot / be.encode_image_unnormalized(x).norm(dim=1, keepdim=True), cos, atol=1e-6, rtol=0)
