"""One batched CAM pass: forward with a hook on the target layer, per-image target scores, gradients, raw maps."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.explain.cam import METHODS
from xaiclip_cli.explain.cam.eigen import eigencam
from xaiclip_cli.explain.cam.gradient import GRADIENT_METHODS
from xaiclip_cli.explain.cam.hooks import capture
from xaiclip_cli.explain.cam.legrad import legrad
from xaiclip_cli.explain.cam.score import gscorecam_weights, scorecam_weights, weighted_map
from xaiclip_cli.explain.layers import LayerInfo, find_module, to_nchw
from xaiclip_cli.explain.registration import CellGeometry, upsample_registered


@dataclass
class BatchMaps:
    """Raw maps [B, h, w] (before ReLU) with the scores of the same forward pass, all on the device."""

    raw: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    scores: torch.Tensor
    target_scores: torch.Tensor


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """Maths in float32 at least (half-precision towers), float64 kept."""
    return t if t.dtype == torch.float64 else t.float()


def check_targets(targets: Any, batch: int, n_texts: int) -> torch.Tensor:
    """One target index per image: a [B] long tensor; a wrong count or range raises (never silently zero maps)."""
    t = torch.as_tensor(targets, dtype=torch.long).flatten()
    if t.numel() != batch:
        raise ValueError(f"got {t.numel()} targets for a batch of {batch} images: give exactly one target per image")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_texts):
        raise UsageError(f"target index out of range: {t.tolist()} for {n_texts} texts")
    return t


def embed_and_score(backend: Any, x: torch.Tensor, text_global: torch.Tensor, score: str) -> tuple[
        torch.Tensor, torch.Tensor]:
    """(normalised image embedding [B,D], scores [B,K]) of one forward pass.

    ``dot`` = ⟨g, t̂⟩ with g the image embedding *before* normalisation: per image it ranks the texts exactly as the
    cosine does, but it is not scale-invariant, so on a tower ending in global average pooling + a linear projection
    Grad-CAM equals CAM (Zhou et al. 2016) instead of a map that sums to zero (cosine/logit: ⟨∂s/∂A, A⟩ = 0).
    """
    if score == "dot":
        try:
            g = backend.encode_image_unnormalized(x)
        except NotImplementedError as exc:
            raise UsageError(f"--score dot: {exc}; use --score logit") from exc
        return F.normalize(g, dim=-1), g @ text_global.t().to(g.dtype)
    g, _ = backend.encode_image(x)
    return g, backend.score(g, text_global, score)


def compute_maps(
    backend: Any,
    pixels: torch.Tensor,
    text_global: torch.Tensor,
    targets: Any | None,
    method: str,
    layer: LayerInfo,
    score: Literal["cosine", "logit", "softmax", "sigmoid", "dot"] = "logit",
    *,
    score_batch: int = 16,
    topk: int = 300,
    unselected: Literal["ref", "exclude"] = "ref",
    legrad_layers: int = 0,
) -> BatchMaps:
    """Raw maps of ``method`` at ``layer`` for a batch, each image explained for its own target text.

    ``targets`` holds one text index per image (``len(targets) == B`` is enforced), or None for the best text.
    ``legrad`` ignores ``layer``: it explains the last ``legrad_layers`` blocks (0 = all) of a ViT tower.
    """
    if method not in METHODS:
        raise UsageError(f"unknown --method {method!r} (choose from {', '.join(METHODS)})")
    info = METHODS[method]
    B = int(pixels.shape[0])
    tgt = None if targets is None else check_targets(targets, B, int(text_global.shape[0])).to(pixels.device)
    if method == "legrad":
        if score == "dot":
            raise UsageError("legrad explains each block's cosine with the text; --score dot is for the CAM methods")
        out = legrad(backend, pixels, text_global, tgt, layers=legrad_layers)
        scores = backend.score(out.image_global, text_global, score).detach()
        logits = backend.score(out.image_global, text_global, "logit").detach()
        return BatchMaps(raw=out.raw, targets=out.targets, logits=logits.float(), scores=scores.float(),
                         target_scores=scores.gather(1, out.targets[:, None])[:, 0].float())
    module = find_module(backend.vision_module(), layer.name)
    grad_ctx = torch.enable_grad() if info.needs_gradient else torch.no_grad()
    # The input requires grad so that a graph exists even when the backend froze its weights (requires_grad=False).
    x = pixels.detach().requires_grad_(info.needs_gradient)
    with capture(module) as box, grad_ctx:
        image_global, scores = embed_and_score(backend, x, text_global, score)
        if tgt is None:  # "best": the highest logit of each image, from this same forward pass
            tgt = backend.score(image_global.detach(), text_global, "logit").argmax(dim=1)
        target_scores = scores.gather(1, tgt[:, None])[:, 0]
        act = box.activation
        if act is None:
            raise XaiclipError(f"target layer {layer.name!r} was not run by the image tower's forward pass")
        grad = None
        if info.needs_gradient:
            if not act.requires_grad:
                raise XaiclipError(f"target layer {layer.name!r} is not connected to the score (no gradient)")
            (grad,) = torch.autograd.grad(target_scores.sum(), act, allow_unused=True)
            if grad is None:
                grad = torch.zeros_like(act)
    logits = backend.score(image_global.detach(), text_global, "logit")
    A = to_nchw(_upcast(act.detach()), layer.layout, layer.prefix, layer.grid)
    G = None if grad is None else to_nchw(_upcast(grad.detach()), layer.layout, layer.prefix, layer.grid)
    if G is not None and not bool(G.abs().amax() > 0):
        raise XaiclipError(
            f"target layer {layer.name!r} gets zero gradient at every spatial position (wrong layer, e.g. a ViT "
            "block output whose patch tokens never reach the score, or a constant score such as softmax over one "
            "text); run `xaiclip cam layers` and pick a layer with a non-zero gradient"
        )

    chosen = tgt

    def scorer(x: torch.Tensor, b: int) -> torch.Tensor:
        return embed_and_score(backend, x, text_global, score)[1][:, int(chosen[b])]

    if method in GRADIENT_METHODS:
        assert G is not None
        raw = GRADIENT_METHODS[method](A, G)
    elif method == "eigencam":
        raw = eigencam(A)
    elif method == "scorecam":
        raw = weighted_map(A, scorecam_weights(A, pixels, scorer, chunk=score_batch))
    elif method == "gscorecam":
        assert G is not None
        raw = weighted_map(A, gscorecam_weights(A, G, pixels, scorer, topk=topk, chunk=score_batch,
                                                unselected=unselected))
    else:  # pragma: no cover - METHODS and the branches above list the same names
        raise UsageError(f"method {method!r} is not implemented")
    return BatchMaps(raw=raw, targets=tgt, logits=logits.detach().float(), scores=scores.detach().float(),
                     target_scores=target_scores.detach().float())


def upsample_maps(raw: torch.Tensor, size: tuple[int, int], relu: bool = True,
                  geometry: CellGeometry | None = None) -> torch.Tensor:
    """ReLU (optional) then bilinear upsampling [B, h, w] → [B, H, W]: half-pixel (``align_corners=False``), or
    cells placed at their measured receptive-field centres when ``geometry`` is given (see explain.registration)."""
    m = raw.clamp(min=0) if relu else raw
    if geometry is not None:
        return upsample_registered(m.float(), size, geometry)
    return F.interpolate(m[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def minmax(maps: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-map min-max scaling to [0, 1] (never inverted); [.., H, W]."""
    flat = maps.flatten(-2)
    lo = flat.min(dim=-1).values[..., None, None]
    hi = flat.max(dim=-1).values[..., None, None]
    return (maps - lo) / (hi - lo + eps)


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Keep a module in eval mode for the duration (restores training mode after)."""
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)
