"""Contrastive CLIP loss over the B×B similarity matrix, with optional same-label soft positives.

Written by hand (a few lines): timm has no contrastive loss and open_clip is not a dependency; the formula is
open_clip's ``ClipLoss`` (mean of image→text and text→image cross-entropy) for one process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_logits(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float,
                bias: torch.Tensor | float | None = None) -> torch.Tensor:
    """Logits [B,B] = scale · image @ textᵀ (+ bias) from normalised features."""
    logits = scale * image @ text.t()
    return logits if bias is None else logits + bias


def soft_targets(labels: torch.Tensor) -> torch.Tensor:
    """Row-normalised same-label matrix: each row spreads probability 1 over the pairs sharing its label."""
    same = (labels[:, None] == labels[None, :]).to(torch.float32)
    return same / same.sum(dim=1, keepdim=True)


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float,
              bias: torch.Tensor | float | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
    """(CE(image→text) + CE(text→image)) / 2; with ``labels`` the targets are same-label soft positives."""
    logits = clip_logits(image, text, scale, bias)
    if labels is None:
        target = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    t = soft_targets(labels.to(logits.device)).to(logits.dtype)
    i2t = -(t * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    t2i = -(t * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return 0.5 * (i2t + t2i)
