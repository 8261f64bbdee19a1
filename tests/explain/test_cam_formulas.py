"""Each CAM method's raw map equals a hand computation on captured activations A and gradients G (cam.md §7.1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xaiclip_cli.explain.cam.engine import compute_maps
from xaiclip_cli.explain.layers import LayerInfo


class Head(nn.Module):
    """s = Σ K⊙A (so G = K) or s = ½ Σ A² (so G = A)."""

    def __init__(self, K: torch.Tensor, quadratic: bool) -> None:
        super().__init__()
        self.register_buffer("K", K)
        self.quadratic = quadratic

    def forward(self, A: torch.Tensor) -> torch.Tensor:
        s = 0.5 * (A * A).flatten(1).sum(1) if self.quadratic else (self.K * A).flatten(1).sum(1)
        return s[:, None]


class FormulaBackend:
    """Just enough of a ClipBackend: encode_image returns the scalar score as a [B, 1] 'global'."""

    def __init__(self, C: int, quadratic: bool, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        conv = nn.Conv2d(3, C, 3, stride=2, padding=1).double()
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
            conv.bias.copy_(torch.randn(C, generator=g))
        self.K = torch.randn(1, C, 4, 4, generator=g, dtype=torch.float64)
        self.net = nn.Sequential()
        # Positive activations (as after a ReLU) keep Σ_hw A away from 0, where XGrad-CAM's division is unstable.
        self.net.add_module("feat", nn.Sequential(conv, nn.Softplus()))
        self.net.add_module("head", Head(self.K, quadratic))
        self.net.eval()

    def encode_image(self, pixels: torch.Tensor):
        return self.net(pixels), None

    def score(self, g: torch.Tensor, t: torch.Tensor, kind: str = "logit") -> torch.Tensor:
        return g

    def vision_module(self) -> nn.Module:
        return self.net


def _setup(quadratic: bool, C: int = 3, B: int = 2):
    be = FormulaBackend(C, quadratic)
    x = torch.randn(B, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        A = be.net.feat(x).numpy()
    G = np.broadcast_to(be.K.double().numpy(), A.shape) if not quadratic else A
    layer = LayerInfo("feat", (B, C, 4, 4), "NCHW", 0, (4, 4))
    return be, x, A, G, layer


def _raw(be, x, layer, method, **kw) -> np.ndarray:
    bm = compute_maps(be, x, torch.zeros(1, 1, dtype=torch.float64), [0] * x.shape[0], method, layer, "logit", **kw)
    return bm.raw.double().numpy()


def _expected(method: str, A: np.ndarray, G: np.ndarray) -> np.ndarray:
    if method == "gradcam":
        return (G.mean(axis=(2, 3), keepdims=True) * A).sum(1)
    if method == "hirescam":
        return (G * A).sum(1)
    if method == "layercam":
        return (np.maximum(G, 0) * A).sum(1)
    if method == "xgradcam":
        w = (G * A / (A.sum(axis=(2, 3), keepdims=True) + 1e-7)).sum(axis=(2, 3), keepdims=True)
        return (w * A).sum(1)
    if method == "gradcam++":
        g2, g3 = G**2, G**3
        alpha = g2 / (2 * g2 + A.sum(axis=(2, 3), keepdims=True) * g3 + 1e-6)
        alpha = np.where(G != 0, alpha, 0)
        w = (np.maximum(G, 0) * alpha).sum(axis=(2, 3), keepdims=True)
        return (w * A).sum(1)
    raise KeyError(method)


@pytest.mark.parametrize("quadratic", [False, True], ids=["G=K", "G=A"])
@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam", "xgradcam", "gradcam++"])
def test_gradient_methods_match_hand_computation(method: str, quadratic: bool) -> None:
    be, x, A, G, layer = _setup(quadratic)
    np.testing.assert_allclose(_raw(be, x, layer, method), _expected(method, A, G), rtol=0, atol=1e-6)


def test_eigencam_matches_svd_projection_and_sign() -> None:
    be, x, A, _, layer = _setup(False, C=5)
    got = _raw(be, x, layer, "eigencam")
    for b in range(A.shape[0]):
        X = A[b].reshape(A.shape[1], -1).T
        X = X - X.mean(0)
        _, _, vt = np.linalg.svd(X, full_matrices=False)
        proj = (X @ vt[0]).reshape(A.shape[2:])
        ref = A[b].mean(0)
        sign = 1.0 if np.corrcoef(proj.ravel(), ref.ravel())[0, 1] >= 0 else -1.0
        np.testing.assert_allclose(got[b], sign * proj, atol=1e-6)
        assert np.corrcoef(got[b].ravel(), ref.ravel())[0, 1] >= 0


def _masked_scores(be, x, A, eps, channels=None):
    out = []
    for b in range(x.shape[0]):
        row = []
        for c in (channels[b] if channels is not None else range(A.shape[1])):
            up = F.interpolate(torch.from_numpy(A[b:b + 1, c:c + 1]), size=x.shape[-2:], mode="bilinear",
                               align_corners=True)[0, 0]
            n = (up - up.min()) / (up.max() - up.min() + eps)
            with torch.no_grad():
                row.append(float(be.net(x[b:b + 1] * n)[0, 0]))
        out.append(row)
    return np.array(out)


def test_scorecam_two_channels_by_hand() -> None:
    be, x, A, _, layer = _setup(False, C=2)
    s = _masked_scores(be, x, A, 1e-8)
    w = np.exp(s - s.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    expected = (w[:, :, None, None] * A).sum(1)
    np.testing.assert_allclose(_raw(be, x, layer, "scorecam", score_batch=1), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("unselected", ["ref", "exclude"])
def test_gscorecam_topk_by_hand(unselected: str) -> None:
    be, x, A, G, layer = _setup(False, C=3)
    k = 2
    idx = np.argsort(-G.mean(axis=(2, 3)), axis=1)[:, :k]
    s = _masked_scores(be, x, A, 1e-6, channels=idx)
    full = np.full((x.shape[0], 3), -np.inf if unselected == "exclude" else 0.0)
    for b in range(x.shape[0]):
        full[b, idx[b]] = s[b]
    w = np.exp(full - full.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    expected = (w[:, :, None, None] * A).sum(1)
    got = _raw(be, x, layer, "gscorecam", topk=k, unselected=unselected, score_batch=2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    if unselected == "ref":
        assert np.all(w > 0)  # every channel keeps e^0/Z, as in the reference


def test_wrong_target_count_raises() -> None:
    be, x, _, _, layer = _setup(False)
    with pytest.raises(ValueError, match="one target per image"):
        compute_maps(be, x, torch.zeros(1, 1), [0], "gradcam", layer)


@pytest.mark.parametrize("chunk", [1, 3, 16])
def test_channel_scores_share_one_forward_for_constant_maps(chunk: int) -> None:
    from xaiclip_cli.explain.cam.score import channel_scores, normalised_masks

    g = torch.Generator().manual_seed(3)
    A = torch.rand(2, 7, 3, 3, generator=g, dtype=torch.float64)
    A[0, [1, 4]] = 0.0  # dead channels (after a ReLU) normalise to an all-zero mask
    A[1, 2] = 0.0
    pixels = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    w = torch.randn(3 * 6 * 6, generator=g, dtype=torch.float64)
    calls: list[int] = []

    def scorer(x: torch.Tensor, b: int) -> torch.Tensor:
        calls.append(int(x.shape[0]))
        return torch.tanh(x.flatten(1) @ w) + b  # any non-linear per-input score

    got = channel_scores(A, pixels, scorer, chunk, eps=1e-8)
    masks = normalised_masks(A, (6, 6), 1e-8)
    expect = torch.stack([torch.tanh((pixels[b][None] * masks[b][:, None]).flatten(1) @ w) + b for b in range(2)])
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-12)
    assert sum(calls) == (7 - 2 + 1) + (7 - 1 + 1)  # the blank input is scored once per image
    assert all(n <= chunk for n in calls)
