"""LIME for images (Ribeiro et al. 2016): a weighted Ridge fit of p_target on which quickshift segments are kept.

As the ``lime`` package's ``LimeImageExplainer``: quickshift segments (scikit-image), the first sample is the
whole image and the others keep each segment with probability 0.5, off segments take the fill, sample weights are
sqrt(exp(−d²/w²)) of the cosine distance d to the all-on vector (w = 0.25), and a Ridge(α=1) with intercept on the
binary matrix gives one coefficient per segment (with every segment selected, lime's ``auto`` feature selection
keeps them all). The map gives each pixel its segment's coefficient.

Segmentation input (``quickshift_input``): the reference (``baseline_attribution/generate_LIME_maps.py``) hands
quickshift the Keras ``preprocess_input`` array (BGR, ImageNet channel means subtracted, 0–255 scale), not an RGB
image in [0, 1]; its colour distances, and so kernel 10 / max_dist 250, are tuned to that scale. ``reference``
(default) segments that same array (measured at 224 px: chelsea 118, immunohistochemistry 82, retina 59
segments); ``rgb`` segments the image in [0, 1] as skimage documents (only 5–8 segments with these settings).
"""

from __future__ import annotations

import numpy as np
import torch

from xaiclip_cli.errors import UsageError
from xaiclip_cli.explain.baselines.scoring import ProbFn

QUICKSHIFT = {"kernel_size": 10, "max_dist": 250.0, "ratio": 0.2}
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # Keras ``preprocess_input`` (caffe mode) of the reference's ResNets
QUICKSHIFT_INPUTS = ("reference", "rgb")


def auto_kernel_size(size: int) -> int:
    """round(10·S/224), at least 1: 10 at 224 px (the reference) and 3 at the toy models' 64 px.

    Why: quickshift's kernel is in pixels; at 64 px kernel 10 leaves a toy-cells image in 4–15 segments (13–27
    with kernel 3), like ``--region-size auto`` for SLICO.
    """
    return max(1, round(10 * size / 224))


def quickshift_segments(image_rgb: np.ndarray, kernel_size: int | None = None, max_dist: float = 250.0,
                        ratio: float = 0.2, quickshift_input: str = "reference") -> np.ndarray:
    """int32 labels [H,W] (0..n−1) from ``skimage.segmentation.quickshift`` of a uint8 RGB image."""
    from skimage.segmentation import quickshift

    if quickshift_input not in QUICKSHIFT_INPUTS:
        raise UsageError(f"unknown quickshift input {quickshift_input!r} (choose from {', '.join(QUICKSHIFT_INPUTS)})")

    img = np.asarray(image_rgb)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise UsageError(f"LIME needs a uint8 RGB image [S,S,3], got {img.dtype} {list(img.shape)}")
    k = auto_kernel_size(min(img.shape[:2])) if kernel_size is None else int(kernel_size)
    if k < 1 or max_dist <= 0 or ratio < 0 or ratio > 1:
        raise UsageError(f"quickshift needs kernel_size >= 1, max_dist > 0, 0 <= ratio <= 1 (got {k}, {max_dist}, "
                         f"{ratio})")
    if quickshift_input == "reference":
        fed = img[:, :, ::-1].astype(np.float64) - np.asarray(CAFFE_MEAN_BGR)
    else:
        fed = img.astype(np.float64) / 255.0
    seg = quickshift(fed, kernel_size=k, max_dist=max_dist, ratio=ratio)
    return np.unique(seg, return_inverse=True)[1].reshape(seg.shape).astype(np.int32)


def lime_weights(probs: ProbFn, x: torch.Tensor, target: int, fill: torch.Tensor, segments: np.ndarray, *,
                 samples: int = 1000, kernel_width: float = 0.25, alpha: float = 1.0, batch: int = 64,
                 seed: int = 0) -> np.ndarray:
    """Ridge coefficients [n_segments] of p_target on the kept-segment indicators for one image x [3,H,W]."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import pairwise_distances

    seg = np.asarray(segments)
    if seg.shape != tuple(x.shape[-2:]):
        raise UsageError(f"segments shape {list(seg.shape)} differs from the image's {list(x.shape[-2:])}")
    ids, inverse = np.unique(seg, return_inverse=True)
    n_feat = len(ids)
    if n_feat < 2:
        raise UsageError(f"LIME needs at least 2 segments, quickshift gave {n_feat} at {seg.shape[0]} px "
                         "(lower the kernel size)")
    rng = np.random.default_rng(seed)
    Z = rng.integers(0, 2, size=(samples, n_feat))
    Z[0] = 1  # lime: the first sample is the unperturbed image
    seg_t = torch.from_numpy(inverse.reshape(seg.shape)).to(x.device)
    ys = []
    with torch.no_grad():
        for i in range(0, samples, batch):
            z = torch.from_numpy(Z[i:i + batch].astype(np.float32)).to(x.device)
            m = z[:, seg_t]  # [n,H,W] 1 where the pixel's segment is kept
            inp = torch.lerp(fill[None], x[None], m[:, None])
            ys.append(probs(inp)[:, target].float().cpu().numpy().astype(np.float64))
    y = np.concatenate(ys)
    d = pairwise_distances(Z, Z[:1], metric="cosine").ravel()
    w = np.sqrt(np.exp(-(d ** 2) / kernel_width ** 2))
    model = Ridge(alpha=alpha, fit_intercept=True, random_state=seed).fit(Z, y, sample_weight=w)
    return model.coef_.astype(np.float64)


def lime_map(probs: ProbFn, x: torch.Tensor, target: int, fill: torch.Tensor, segments: np.ndarray,
             **kw: float) -> np.ndarray:
    """float32 [H,W]: each pixel gets its segment's LIME coefficient."""
    coef = lime_weights(probs, x, target, fill, segments, **kw)  # type: ignore[arg-type]
    inverse = np.unique(segments, return_inverse=True)[1].reshape(np.shape(segments))
    return coef[inverse].astype(np.float32)
