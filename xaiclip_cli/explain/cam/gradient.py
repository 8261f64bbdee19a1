"""Gradient-weighted CAM formulas on activations A and gradients G, both [B, C, h, w] → raw map [B, h, w].

Pure torch so that maps stay on the device; the formulas and epsilons follow pytorch-grad-cam (MIT) so that the
equality benchmark holds. The raw map is returned before any ReLU.
"""

from __future__ import annotations

import torch


def gradcam(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Grad-CAM: w_c = mean_hw G_c; M = Σ_c w_c A_c."""
    w = G.mean(dim=(2, 3), keepdim=True)
    return (w * A).sum(dim=1)


def hirescam(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """HiResCAM: M = Σ_c G_c ⊙ A_c."""
    return (G * A).sum(dim=1)


def layercam(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """LayerCAM: M = Σ_c ReLU(G_c) ⊙ A_c."""
    return (G.clamp(min=0) * A).sum(dim=1)


def xgradcam(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM: w_c = Σ_hw G_c A_c / (Σ_hw A_c + 1e-7); M = Σ_c w_c A_c."""
    sum_a = A.sum(dim=(2, 3), keepdim=True)
    w = (G * A / (sum_a + 1e-7)).sum(dim=(2, 3), keepdim=True)
    return (w * A).sum(dim=1)


def gradcampp(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++: α = G²/(2G² + Σ_hw A · G³ + 1e-6), 0 where G = 0; w_c = Σ_hw ReLU(G) α; M = Σ_c w_c A_c."""
    g2 = G * G
    g3 = g2 * G
    sum_a = A.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
    alpha = torch.where(G != 0, alpha, torch.zeros_like(alpha))
    w = (G.clamp(min=0) * alpha).sum(dim=(2, 3), keepdim=True)
    return (w * A).sum(dim=1)


GRADIENT_METHODS = {
    "gradcam": gradcam,
    "hirescam": hirescam,
    "layercam": layercam,
    "xgradcam": xgradcam,
    "gradcam++": gradcampp,
}
