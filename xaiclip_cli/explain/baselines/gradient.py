"""Saliency (Simonyan et al. 2014, xplique ``Saliency``): |∂p_target/∂x| on the normalised input, max over channels."""

from __future__ import annotations

import torch

from xaiclip_cli.errors import XaiclipError
from xaiclip_cli.explain.baselines.scoring import ProbFn


def gradient_maps(probs: ProbFn, x: torch.Tensor, targets: list[int], batch: int = 64) -> torch.Tensor:
    """Maps [B,H,W] = max_c |∂p_t(x)/∂x_c| for each image of ``x`` [B,3,H,W] and its target."""
    out = []
    for i in range(0, x.shape[0], batch):
        xi = x[i:i + batch].detach().clone().requires_grad_(True)
        t = torch.tensor(targets[i:i + batch], device=x.device)
        with torch.enable_grad():
            p = probs(xi)
            if not p.requires_grad:
                raise XaiclipError("the score carries no gradient (the scorer runs under no_grad); "
                                   "gradient maps need a differentiable model")
            # Images of a batch are independent (eval mode), so the gradient of the sum is each image's own.
            (g,) = torch.autograd.grad(p.gather(1, t[:, None]).sum(), xi)
        out.append(g.detach().abs().amax(dim=1))
    return torch.cat(out)
