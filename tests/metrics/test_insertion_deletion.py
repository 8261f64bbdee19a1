"""Oracles of metrics.md §6 for insertion/deletion: perfect curves, worked table, linear closed form, invariances."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xaiclip_cli.metrics import insertion_deletion as ID


def _curves(score_fn, x, base, phi, steps, conv, mode, unit="input", batch_size=64):
    h, w = x.shape[-2:]
    ranks = ID.pixel_ranks(phi, (h, w), unit=unit, convention=conv)
    n = ID.n_features(np.shape(phi), (h, w), unit)
    cnt = ID.counts(n, steps, conv)
    y = ID.perturbation_curves(score_fn, x[None], base[None], torch.as_tensor(ranks)[None], cnt, mode,
                               batch_size=batch_size)[0]
    return cnt, n, y


def _sum_model(b, t):
    return b.sum(dim=(1, 2, 3))


WORKED = {  # convention -> (counts, deletion AUC, insertion AUC), metrics.md §2
    "xaiclip": ([0, 2, 5], 4.85, 10.65),
    "torchcam": ([0, 3, 5], 5.4, 10.1),
    "xplique": ([0, 2, 5], 5.625, 9.875),
    "rise": ([0, 3, 5], 4.625, 10.875),
}


@pytest.mark.parametrize("conv", list(WORKED))
def test_worked_oracle_every_convention(conv: str) -> None:
    x = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5], dtype=torch.float64).reshape(1, 1, 5)
    phi = x[0].numpy()
    exp_counts, exp_del, exp_ins = WORKED[conv]
    out = {}
    for mode in ("deletion", "insertion"):
        h, w = 1, 5
        ranks = ID.pixel_ranks(phi, (h, w), convention=conv)
        cnt = ID.counts(5, 2, conv, rise_step=3 if conv == "rise" else None)
        assert cnt.tolist() == exp_counts
        y = ID.perturbation_curves(_sum_model, x[None], torch.zeros_like(x)[None], torch.as_tensor(ranks)[None],
                                   cnt, mode)[0]
        out[mode] = ID.auc(cnt, 5, y, conv)
    assert out["deletion"] == pytest.approx(exp_del, abs=1e-12)
    assert out["insertion"] == pytest.approx(exp_ins, abs=1e-12)


@pytest.mark.parametrize("conv", list(WORKED))
def test_all_conventions_agree_when_steps_divide(conv: str) -> None:
    x = torch.tensor([[4.0, 3.0], [2.0, 1.0]], dtype=torch.float64)[None]
    phi = x[0].numpy()
    vals = []
    for mode in ("deletion", "insertion"):
        cnt, n, y = _curves(_sum_model, x, torch.zeros_like(x), phi, 4, conv, mode)
        vals.append(ID.auc(cnt, n, y, conv))
    assert vals == pytest.approx([3.75, 6.25], abs=1e-12)


def test_perfect_deletion_and_insertion() -> None:
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.uniform(0.1, 1.0, (3, 16, 16)))
    base = torch.zeros_like(x)
    phi = rng.random((16, 16))

    def f_del(b, t):  # 1 − 1[some feature equals the baseline]
        return 1.0 - (b == 0).flatten(1).any(dim=1).double()

    def f_ins(b, t):  # 1[some feature differs from the baseline]
        return (b != 0).flatten(1).any(dim=1).double()

    cnt, n, y = _curves(f_del, x, base, phi, 256, "xaiclip", "deletion")
    assert y.tolist() == [1.0] + [0.0] * 256
    assert ID.auc(cnt, n, y) == pytest.approx(1 / 512, abs=1e-15)
    cnt, n, y = _curves(f_ins, x, base, phi, 256, "xaiclip", "insertion")
    assert ID.auc(cnt, n, y) == pytest.approx(1 - 1 / 512, abs=1e-15)


@pytest.mark.parametrize("conv", ["xaiclip", "torchcam", "xplique", "rise"])
@pytest.mark.parametrize("baseline", ["zero", "random"])
def test_linear_closed_form_and_identity(conv: str, baseline: str) -> None:
    rng = np.random.default_rng(1)
    c, h, w = 3, 7, 9  # N = 63, s = 10: s does not divide N
    x = torch.as_tensor(rng.normal(size=(c, h, w)))
    beta = torch.zeros_like(x) if baseline == "zero" else torch.as_tensor(rng.normal(size=(c, h, w)))
    wt = torch.as_tensor(rng.normal(size=(c, h, w)))
    bias = 0.3
    phi = rng.random((h, w))

    def f(b, t):
        return (b * wt).sum(dim=(1, 2, 3)) + bias

    fx, fb = float(f(x[None], None)), float(f(beta[None], None))
    order = ID.feature_order(phi, conv)
    contrib = ((wt * (x - beta)).sum(0)).numpy().reshape(-1)[order]
    aucs = {}
    for mode in ("deletion", "insertion"):
        cnt, n, y = _curves(f, x, beta, phi, 10, conv, mode)
        d = np.array([contrib[:k].sum() for k in cnt])
        expected = fx - d if mode == "deletion" else fb + d
        np.testing.assert_allclose(y, expected, atol=1e-6)
        aucs[mode] = ID.auc(cnt, n, y, conv)
    length = (cnt[-1] - cnt[0]) / n if conv in ("xaiclip", "torchcam") else 1.0
    assert aucs["deletion"] + aucs["insertion"] == pytest.approx((fx + fb) * length, abs=1e-9)


def test_monotone_invariance_bit_for_bit() -> None:
    rng = np.random.default_rng(2)
    x = torch.as_tensor(rng.normal(size=(3, 8, 8)))
    wt = torch.as_tensor(rng.normal(size=(3, 8, 8)))
    phi = rng.random((8, 8))

    def f(b, t):
        return torch.tanh((b * wt).sum(dim=(1, 2, 3)))

    def both(p, unit="input"):
        return [ID.auc(*_curves(f, x, torch.zeros_like(x), p, 16, "xaiclip", m, unit=unit)) for m in
                ("deletion", "insertion")]

    ref = both(phi)
    assert both(np.exp(phi)) == ref
    assert both((phi - phi.min()) / (phi.max() - phi.min())) == ref
    assert both(3.0 * phi + 2.0) == ref
    coarse = rng.random((4, 4))  # bilinear resize: positive affine maps keep the order
    assert both(2.0 * coarse + 1.0) == both(coarse)
    assert both(np.exp(coarse), unit="grid") == both(coarse, unit="grid")


def test_batch_size_never_changes_result() -> None:
    rng = np.random.default_rng(3)
    x = torch.as_tensor(rng.normal(size=(3, 6, 6)))
    wt = torch.as_tensor(rng.normal(size=(3, 6, 6)))
    phi = rng.random((6, 6))

    def f(b, t):
        return torch.sigmoid((b * wt).sum(dim=(1, 2, 3)))

    ref = _curves(f, x, torch.zeros_like(x), phi, 9, "xaiclip", "deletion", batch_size=100)[2]
    for bs in (1, 3, 7):
        assert _curves(f, x, torch.zeros_like(x), phi, 9, "xaiclip", "deletion", batch_size=bs)[2].tolist() == \
            ref.tolist()


def test_ties_lower_index_first_and_grid_unit() -> None:
    phi = np.array([[1.0, 1.0], [0.0, 1.0]])
    assert ID.feature_order(phi).tolist() == [0, 1, 3, 2]
    ranks = ID.pixel_ranks(phi, (4, 4), unit="grid")
    assert ranks.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [3, 3, 2, 2], [3, 3, 2, 2]]
    assert ID.n_features(phi.shape, (4, 4), "grid") == 4


def test_nan_map_and_bad_shape_raise_invalid() -> None:
    with pytest.raises(ID.InvalidMap) as e:
        ID.pixel_ranks(np.array([[np.nan, 1.0]]), (1, 2))
    assert e.value.reason == "nan"
    with pytest.raises(ID.InvalidMap) as e:
        ID.pixel_ranks(np.zeros((2, 3, 4, 5)), (4, 5))
    assert e.value.reason == "bad_shape"
    with pytest.raises(ID.InvalidMap) as e:  # stretched map: another aspect ratio than the image
        ID.pixel_ranks(np.random.default_rng(0).random((8, 12)), (64, 64))
    assert e.value.reason == "bad_shape"
    assert ID.pixel_ranks(np.random.default_rng(0).random((7, 7)), (224, 224)).shape == (224, 224)


def test_baselines_in_normalised_space() -> None:
    x = torch.ones(1, 3, 12, 12, dtype=torch.float64)
    mean, std = torch.tensor([0.5, 0.4, 0.3], dtype=torch.float64), torch.tensor([0.2, 0.25, 0.5], dtype=torch.float64)
    black = ID.make_baseline("black", x, mean=mean, std=std)
    assert torch.allclose(black[0, :, 0, 0], -mean / std)
    assert ID.make_baseline("mean", x, mean=mean, std=std).abs().max() == 0
    assert float(ID.make_baseline("value", x, mean=mean, std=std, value=0.7).unique()) == 0.7
    n1 = ID.make_baseline("noise", x, mean=mean, std=std, seed=4)
    assert torch.equal(n1, ID.make_baseline("noise", x, mean=mean, std=std, seed=4))
    b = ID.make_baseline("blur", x, mean=mean, std=std)
    assert b[0, 0, 6, 6] == pytest.approx(1.0, abs=1e-9)  # centre: whole kernel inside, sums to 1
    assert b[0, 0, 0, 0] < 0.5  # corner: zero padding
    assert ID.parse_baseline("value:-1.5") == ("value", -1.5)
    with pytest.raises(ValueError, match="black-min, white-max"):
        ID.parse_baseline("grey")


def test_quantus_black_min_and_white_max_per_sample() -> None:
    # Two samples with different extremes, in different channels and pixels.
    x = torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    x[0] = torch.arange(12, dtype=torch.float64).reshape(3, 2, 2) * 0.5 - 1.0  # min -1.0 at (0,0,0), max 4.5
    x[1] = torch.tensor([[[0.3, 0.2], [0.9, 0.4]], [[-2.2, 0.0], [0.1, 0.0]], [[0.5, 7.0], [0.6, 0.7]]],
                        dtype=torch.float64)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.5])
    lo = ID.make_baseline("black-min", x, mean=mean, std=std)
    hi = ID.make_baseline("white-max", x, mean=mean, std=std)
    assert lo.shape == x.shape and hi.shape == x.shape
    assert torch.equal(lo[0], torch.full((3, 2, 2), -1.0, dtype=torch.float64))
    assert torch.equal(lo[1], torch.full((3, 2, 2), -2.2, dtype=torch.float64))
    assert torch.equal(hi[0], torch.full((3, 2, 2), 4.5, dtype=torch.float64))
    assert torch.equal(hi[1], torch.full((3, 2, 2), 7.0, dtype=torch.float64))
    lo[0, 0, 0, 0] = 99.0  # a real tensor, not a view of x's statistics: editing it changes nothing else
    assert float(lo[0, 1, 1, 1]) == -1.0 and float(x[0].min()) == -1.0
    # `black` keeps meaning pixel 0 before normalisation, whatever the input
    assert torch.allclose(ID.make_baseline("black", x, mean=mean, std=std)[1, :, 0, 0],
                          (-mean / std).double())
    assert ID.parse_baseline(" Black-Min ") == ("black-min", None) and ID.parse_baseline("white-max")[0] == "white-max"
    rec = ID.baseline_record("black-min", None)
    assert rec["kind"] == "black-min" and "minimum of the normalised input" in rec["space"] and rec["value"] is None
    assert "before normalisation" in ID.baseline_record("black", None)["space"]
    assert set(ID.BASELINE_SPACES) == {*ID.BASELINES, "value"}


# ------------------------------------------------------------------------------------------- protocol (a)
C = [0.5, 0.8, 0.9]
Q = [0.6, 0.85, 0.95]


def _oracle_regions() -> np.ndarray:
    img = np.full((2, 2, 3), 100, np.uint8)
    img[1, 0] = 0  # black pixel of the original
    regions = np.zeros((3, 2, 2, 3), np.uint8)
    for j, pix in enumerate([[(0, 0)], [(0, 1), (1, 0)], [(1, 1)]]):
        for r, c in pix:
            regions[j, r, c] = img[r, c]
    return regions


def test_smdl_protocol_example() -> None:
    regions = _oracle_regions()
    areas = [0.0] + [ID.nonzero_fraction(regions[: j + 1].sum(0)) for j in range(3)]
    xi, yi, xd, yd = ID.smdl_curves(np.array(areas), np.array(C), np.array(Q))
    np.testing.assert_allclose(xi, [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(yi, [0.05, 0.5, 0.8, 0.9])
    np.testing.assert_allclose(xd, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(yd, [0.9, 0.4, 0.15, 0.05])
    ins, dele = ID.smdl_auc(np.array(areas), np.array(C), np.array(Q))
    assert ins == pytest.approx(0.44375, abs=1e-12) and dele == pytest.approx(0.25625, abs=1e-12)


def _reference_evaluator(npy, js):
    """The reference formula written independently: cumulative region images, non-black pixel fractions."""
    from sklearn import metrics

    image = np.load(npy)
    with open(js) as fh:
        d = json.load(fh)
    ins_score = [1 - d["collaboration_score"][-1]] + d["consistency_score"]
    del_score = [d["consistency_score"][-1]] + [1 - s for s in d["collaboration_score"]]
    h, w = image.shape[1:3]
    ins_img = image[0] - image[0]
    del_img = image.sum(0)
    ins_area = [0.0]
    del_area = [1 - (del_img.sum(-1) != 0).sum() / (h * w)]
    for sub in image:
        ins_img = ins_img + sub
        del_img = del_img - sub
        ins_area.append((ins_img.sum(-1) != 0).sum() / (h * w))
        del_area.append(1 - (del_img.sum(-1) != 0).sum() / (h * w))
    return metrics.auc(ins_area, ins_score), metrics.auc(del_area, del_score)


def test_legacy_layout_parity(tmp_path) -> None:
    rng = np.random.default_rng(5)
    for case in range(3):
        h = 12
        img = rng.integers(0, 256, (h, h, 3)).astype(np.uint8)
        img[rng.random((h, h)) < 0.1] = 0
        labels = rng.integers(0, 6, (h, h))
        order = rng.permutation(6)
        regions = np.stack([np.where((labels == k)[..., None], img, 0) for k in order]).astype(np.uint8)
        c = np.sort(rng.random(6)).tolist()
        q = np.sort(rng.random(6)).tolist()
        npy, js = tmp_path / f"{case}.npy", tmp_path / f"{case}.json"
        np.save(npy, regions)
        js.write_text(json.dumps({"consistency_score": c, "collaboration_score": q}))
        item = ID.legacy_item(npy, js)
        ours = ID.smdl_auc(item["area_ins"], item["consistency"], item["collaboration"], item["x_del"])
        ref = _reference_evaluator(npy, js)
        assert ours == pytest.approx(ref, abs=1e-12)
        # the compact layout (area_ins only) gives the same numbers
        assert ID.smdl_auc(item["area_ins"], item["consistency"], item["collaboration"]) == pytest.approx(ref,
                                                                                                          abs=1e-12)


def test_smdl_lists_must_agree() -> None:
    with pytest.raises(ValueError, match="disagree"):
        ID.smdl_curves(np.zeros(3), np.zeros(3), np.zeros(3))
