"""Oracles of metrics.md §6.5-6.6: MuFidelity ±1 (both subset styles, both correlations), invariances, AD/IC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xaiclip_cli.metrics import drop
from xaiclip_cli.metrics import mufidelity as MF


def _f(b):
    return b.sum(dim=(1, 2, 3))


@pytest.mark.parametrize("corr", ["spearman", "pearson"])
@pytest.mark.parametrize("style", ["bernoulli", "fixed"])
def test_mufidelity_plus_minus_one(corr: str, style: str) -> None:
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.uniform(0.1, 1.0, (1, 9, 9)), dtype=torch.float64)
    phi = x[0].numpy()
    mrng = np.random.Generator(np.random.PCG64(3))
    keep = MF.bernoulli_masks(mrng, 32, None, (9, 9)) if style == "bernoulli" else \
        MF.fixed_masks(mrng, 32, (1, 9, 9), 10)
    base = torch.zeros_like(x)
    rho, delta, attr = MF.mufidelity_image(_f, x, phi, base, keep, corr)
    np.testing.assert_allclose(delta, attr, atol=1e-12)
    assert len(np.unique(np.round(delta, 9))) >= 2
    assert rho == pytest.approx(1.0, abs=1e-12)
    assert MF.mufidelity_image(_f, x, -phi, base, keep, corr)[0] == pytest.approx(-1.0, abs=1e-12)
    assert MF.mufidelity_image(_f, x, 2.5 * phi, base, keep, corr)[0] == pytest.approx(rho, abs=1e-12)


@pytest.mark.parametrize("corr", ["spearman", "pearson"])
def test_mufidelity_quantus_black_min_baseline(corr: str) -> None:
    from xaiclip_cli.metrics.insertion_deletion import make_baseline

    rng = np.random.default_rng(4)
    x = torch.as_tensor(rng.uniform(-1.5, 2.0, (3, 9, 9)), dtype=torch.float64)
    base = make_baseline("black-min", x[None], mean=torch.zeros(3), std=torch.ones(3))[0]
    lo = float(x.min())
    assert torch.equal(base, torch.full_like(x, lo))
    keep = MF.bernoulli_masks(np.random.Generator(np.random.PCG64(5)), 32, 3, (9, 9))  # [R,H,W], all channels
    phi = x.sum(0).numpy()  # φ = x summed over channels: a_r = Σ_{perturbed} Σ_c x
    rho, delta, attr = MF.mufidelity_image(_f, x, phi, base, keep, corr)
    # Hand oracle: f = Σx, so Δ_r = Σ over perturbed pixels and channels of (x − min x).
    removed = 1.0 - keep
    hand = np.array([((x.numpy() - lo) * r[None]).sum() for r in removed])
    np.testing.assert_allclose(delta, hand, atol=1e-10)
    assert len(np.unique(np.round(delta, 9))) >= 2
    # φ = x − min(x) attributes exactly Δ: +1; φ = x is off by min·|S| (|S| varies with Bernoulli subsets)
    shifted = (x - lo).sum(0).numpy()
    r_shift, d2, a2 = MF.mufidelity_image(_f, x, shifted, base, keep, corr)
    np.testing.assert_allclose(a2, d2, atol=1e-10)
    assert r_shift == pytest.approx(1.0, abs=1e-12)
    assert MF.mufidelity_image(_f, x, -shifted, base, keep, corr)[0] == pytest.approx(-1.0, abs=1e-12)
    assert rho < 1.0 - 1e-6
    # fixed-size subsets (|S| constant, one channel): Δ_r = a_r − |S|·min, so φ = x gives +1 too
    x1 = x[:1]
    b1 = make_baseline("black-min", x1[None], mean=torch.zeros(1), std=torch.ones(1))[0]
    kf = MF.fixed_masks(np.random.Generator(np.random.PCG64(6)), 32, (1, 9, 9), 20)
    r1, d1, a1 = MF.mufidelity_image(_f, x1, x1[0].numpy(), b1, kf, corr)
    np.testing.assert_allclose(d1, a1 - 20 * float(x1.min()), atol=1e-10)
    assert r1 == pytest.approx(1.0, abs=1e-12)


def test_offset_changes_bernoulli_not_fixed() -> None:
    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.uniform(0.1, 1.0, (1, 9, 9)), dtype=torch.float64)
    phi = x[0].numpy()
    base = torch.zeros_like(x)
    kb = MF.bernoulli_masks(np.random.Generator(np.random.PCG64(0)), 40, None, (9, 9))
    kf = MF.fixed_masks(np.random.Generator(np.random.PCG64(0)), 40, (1, 9, 9), 12)
    for corr in ("spearman", "pearson"):
        rb = MF.mufidelity_image(_f, x, phi, base, kb, corr)[0]
        assert MF.mufidelity_image(_f, x, phi + 1.0, base, kb, corr)[0] != pytest.approx(rb, abs=1e-6)
        rf = MF.mufidelity_image(_f, x, phi, base, kf, corr)[0]
        assert MF.mufidelity_image(_f, x, phi + 1.0, base, kf, corr)[0] == pytest.approx(rf, abs=1e-12)


def test_masks_seeded_and_grid_cells() -> None:
    a = MF.bernoulli_masks(np.random.Generator(np.random.PCG64(7)), 5, 7, (224, 224))
    b = MF.bernoulli_masks(np.random.Generator(np.random.PCG64(7)), 5, 7, (224, 224))
    assert np.array_equal(a, b)
    assert np.array_equal(a[:, ::32, ::32], a[:, 16::32, 16::32])  # 224/7 = 32 px cells
    frac = 1 - MF.bernoulli_masks(np.random.Generator(np.random.PCG64(0)), 200, 9, (9, 9)).mean()
    assert frac == pytest.approx(0.2, abs=0.02)
    f = MF.fixed_masks(np.random.Generator(np.random.PCG64(0)), 3, (3, 4, 4), 5)
    assert (1 - f).reshape(3, -1).sum(1).tolist() == [5, 5, 5]


def test_constant_delta_gives_zero() -> None:
    assert MF.correlation(np.ones(5), np.arange(5.0)) == 0.0


def test_average_drop_increase_gain() -> None:
    y = np.array([0.5, 0.8, 0.4])
    r = drop.drop_values(y, y)  # M ≡ 1: O = Y
    assert r["average_drop"].tolist() == [0, 0, 0] and r["increase_in_confidence"].tolist() == [0, 0, 0]
    o = np.array([0.25, 0.9, 0.1])
    r = drop.drop_values(y, o)
    np.testing.assert_allclose(r["average_drop"], [0.5, 0.0, 0.75])
    assert r["increase_in_confidence"].tolist() == [0, 1, 0]
    np.testing.assert_allclose(r["average_gain"], [0, 0.1 / 0.2, 0])
    np.testing.assert_allclose(drop.drop_values(y, o, "absolute")["average_drop"], [0.25, 0, 0.3])
    with pytest.raises(ValueError, match="Y > 0"):
        drop.drop_values(np.array([-1.0]), np.array([0.0]))


def test_drop_on_linear_model_matches_closed_form() -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(0.1, 1, (3, 8, 8))
    w = rng.uniform(0.1, 1, (3, 8, 8))
    m = drop.minmax(rng.random((8, 8)))
    assert m.min() == 0 and m.max() == pytest.approx(1.0, abs=1e-6)
    y = float((w * x).sum())
    o = float((w * x * m[None]).sum())
    r = drop.drop_values(np.array([y]), np.array([o]))
    assert r["average_drop"][0] == pytest.approx((y - o) / y)
