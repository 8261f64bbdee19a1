"""Classification losses: cross-entropy, focal (hand-written: timm has none), timm asymmetric, BCE for multi-label."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float | None = None
) -> torch.Tensor:
    """Mean focal loss FL = -alpha_t (1 - p_t)^gamma log p_t over a batch of single-label logits [B, C].

    ``alpha`` weighs class 1 (binary convention: alpha for positives, 1 - alpha for the rest); None = off.
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    log_pt = log_p.gather(1, target.long().unsqueeze(1)).squeeze(1)
    pt = log_pt.exp()
    loss = -((1.0 - pt) ** gamma) * log_pt
    if alpha is not None:
        alpha_t = torch.where(target == 1, torch.full_like(pt, alpha), torch.full_like(pt, 1.0 - alpha))
        loss = alpha_t * loss
    return loss.mean()


class FocalLoss(nn.Module):
    """Module wrapper of :func:`focal_loss`."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, target, self.gamma, self.alpha)


def build_loss(
    loss_type: str,
    multi_label: bool = False,
    class_weights: list[float] | None = None,
    label_smoothing: float = 0.0,
    focal_gamma: float = 2.0,
    focal_alpha: float | None = None,
) -> nn.Module:
    """The training criterion for a loss name (multi-label data use BCE-with-logits unless asymmetric)."""
    from timm.loss import AsymmetricLossMultiLabel, AsymmetricLossSingleLabel

    if multi_label:
        if loss_type == "asymmetric":
            return AsymmetricLossMultiLabel(gamma_pos=1, gamma_neg=4)
        return nn.BCEWithLogitsLoss()
    if loss_type == "ce":
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
    if loss_type == "focal":
        return FocalLoss(focal_gamma, focal_alpha)
    if loss_type == "asymmetric":
        return AsymmetricLossSingleLabel(gamma_pos=1, gamma_neg=4, eps=0.1)
    if loss_type == "bce":
        raise ValueError("training.loss_type bce needs multi-label data; use ce, focal or asymmetric")
    raise ValueError(f"unknown training.loss_type {loss_type!r}")
