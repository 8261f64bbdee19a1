"""Oracles of metrics.md §9: a constant map fails (similarity 1 at every step), a linear model's input gradient
changes when its weights are re-drawn, the same seed gives the same curve, the pass band, SSIM against skimage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from xaiclip_cli.metrics import sanity as S


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 1))


def _grad_map(model: nn.Module, xs: list[torch.Tensor]):
    def fn() -> list[np.ndarray]:
        out = []
        for x in xs:
            x = x.clone().requires_grad_(True)
            model(x.reshape(1, -1)).sum().backward()
            out.append(x.grad.reshape(8, 8).numpy().copy())
        return out
    return fn


def _units(model: nn.Module):
    return [(n, m) for n, m in model.named_children() if any(True for _ in m.parameters())]


def test_constant_map_fails_every_step() -> None:
    model = _model()
    const = np.random.default_rng(0).random((8, 8))
    names, maps = S.randomisation_curve(lambda: [const, const], _units(model), seed=1)
    sims = S.curve_similarities(names, maps)
    assert names == ["trained", "2", "0"]  # top-down: output side first
    assert np.all(sims["ssim"] == 1.0) and np.all(sims["spearman"] == 1.0)
    v = S.verdict(sims["ssim"][:, -1], band=0.1, b=50)
    assert v["pass"] is False and v["margin"] == pytest.approx(-0.9)


def test_gradient_of_linear_model_changes_and_is_seeded() -> None:
    xs = [torch.randn(64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    curves = []
    for _ in range(2):
        model = _model()
        snap = S.Snapshot(model)
        names, maps = S.randomisation_curve(_grad_map(model, xs), _units(model), seed=5)
        curves.append(S.curve_similarities(names, maps))
        snap.restore()
        assert torch.equal(model[0].weight, _model()[0].weight)  # trained weights back
    assert np.all(curves[0]["ssim"][:, 0] == 1.0)
    assert np.all(curves[0]["spearman"][:, -1] < 0.9)  # weights re-drawn: the map changed
    np.testing.assert_array_equal(curves[0]["ssim"], curves[1]["ssim"])  # same seed, same curve


def test_independent_restores_each_unit() -> None:
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    S.randomisation_curve(lambda: [np.zeros((8, 8))], _units(model), independent=True, seed=0)
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)


def test_ssim_matches_skimage_and_band() -> None:
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a, b = rng.random((16, 16)), rng.random((16, 16))
    ref = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=6 / 7,
                                use_sample_covariance=False)
    def mm(z):
        return (z - z.min()) / (z.max() - z.min())

    assert S.ssim(a, b) == pytest.approx(structural_similarity(mm(a), mm(b), data_range=1.0, gaussian_weights=True,
                                                               sigma=6 / 7, use_sample_covariance=False))
    assert ref != 1.0 and S.ssim(a, a) == 1.0
    assert 2 * int(3.5 * S.SSIM_SIGMA + 0.5) + 1 == S.SSIM_WINDOW
    maps = [rng.random((16, 16)) for _ in range(5)]
    band = S.random_pair_baseline(maps, 50, 3)
    assert band == S.random_pair_baseline(maps, 50, 3) and abs(band["ssim"]) < 0.3 and band["pairs"] == 50
    assert S.spearman(np.ones((4, 4)), a[:4, :4]) == 0.0
