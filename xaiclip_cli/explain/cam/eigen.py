"""EigenCAM: projection of the activations on their first principal direction; it ignores the text.

Follows pytorch-grad-cam's ``get_2d_projection`` (channels centred over positions, first right singular vector), with
the sign fixed so that the map correlates non-negatively with the channel-mean activation (SVD signs are arbitrary).
"""

from __future__ import annotations

import torch


def eigencam(A: torch.Tensor) -> torch.Tensor:
    """Raw EigenCAM map [B, h, w] from activations [B, C, h, w]."""
    B, C, h, w = A.shape
    A = A if A.dtype == torch.float64 else A.float()
    X = A.reshape(B, C, h * w).transpose(1, 2)  # [B, hw, C]
    X = torch.nan_to_num(X, nan=0.0)
    X = X - X.mean(dim=1, keepdim=True)
    # Only the first right singular vector is needed; full_matrices=False keeps it cheap.
    _, _, Vh = torch.linalg.svd(X, full_matrices=False)
    proj = X @ Vh[:, 0, :].unsqueeze(-1)  # [B, hw, 1]
    M = proj[..., 0]
    ref = A.mean(dim=1).reshape(B, h * w)
    corr = ((M - M.mean(1, keepdim=True)) * (ref - ref.mean(1, keepdim=True))).sum(1)
    sign = torch.where(corr < 0, -1.0, 1.0).to(M.dtype).unsqueeze(1)
    return (M * sign).reshape(B, h, w)
