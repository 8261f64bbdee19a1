"""Tests of the losses: focal against CE and a hand computation, asymmetric against timm and by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xaiclip_cli.train.losses import FocalLoss, build_loss, focal_loss


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 1, 0, 2])


def test_focal_gamma_zero_equals_cross_entropy() -> None:
    logits, y = _batch()
    assert torch.allclose(focal_loss(logits, y, gamma=0.0), F.cross_entropy(logits, y), atol=1e-6)


def test_focal_matches_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    p0 = math.exp(2) / (math.exp(2) + 1)
    p1 = 1 / (1 + math.e)
    want = (-(1 - p0) ** 2 * math.log(p0) - (1 - p1) ** 2 * math.log(p1)) / 2
    assert focal_loss(logits, y, gamma=2.0).item() == pytest.approx(want, rel=1e-6)
    # alpha weighs class 1 with alpha and class 0 with 1 - alpha
    want_a = 0.75 * want
    assert FocalLoss(2.0, alpha=0.25)(logits, y).item() == pytest.approx(want_a, rel=1e-6)


def test_asymmetric_is_timm_and_matches_hand_computation() -> None:
    from timm.loss import AsymmetricLossSingleLabel

    loss = build_loss("asymmetric")
    assert isinstance(loss, AsymmetricLossSingleLabel)
    assert (loss.gamma_pos, loss.gamma_neg, loss.eps) == (1, 4, 0.1)
    logits = torch.tensor([[1.0, -1.0]])
    y = torch.tensor([0])
    p = torch.softmax(logits, -1)[0]
    logp = torch.log_softmax(logits, -1)[0]
    # target class weighted by (1-p)^1, the other by p^4; targets smoothed to 0.95 / 0.05
    want = -(0.95 * (1 - p[0]) * logp[0] + 0.05 * p[1] ** 4 * logp[1])
    assert loss(logits, y).item() == pytest.approx(want.item(), rel=1e-6)


def test_build_loss_variants() -> None:
    ce = build_loss("ce", class_weights=[1.0, 2.0], label_smoothing=0.1)
    assert isinstance(ce, torch.nn.CrossEntropyLoss) and ce.label_smoothing == 0.1
    assert ce.weight.tolist() == [1.0, 2.0]
    assert isinstance(build_loss("ce", multi_label=True), torch.nn.BCEWithLogitsLoss)
    with pytest.raises(ValueError, match="multi-label"):
        build_loss("bce")
