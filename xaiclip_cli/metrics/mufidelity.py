"""MuFidelity (xplique, Bhatt et al. 2020) and Quantus-style FaithfulnessCorrelation, seeded (metrics.md §3).

Hand-written: xplique needs TensorFlow and an unseeded TF RNG, Quantus needs opencv-python (clashes with the
project's contrib cv2); both are the same few lines of masking plus ``scipy.stats.spearmanr``/``pearsonr``.
Masks come from numpy PCG64 with a recorded seed and are shared by every method on an image (paired comparison).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np

Subset = Literal["bernoulli", "fixed"]


def bernoulli_masks(rng: np.random.Generator, n: int, grid: int | None, size: tuple[int, int],
                    subset_percent: float = 0.2) -> np.ndarray:
    """Keep-masks [n,H,W] (1 = kept): cells of a g×g grid perturbed with probability ``subset_percent``
    (u ~ U(0,1), keep u > p), nearest-exact upsampled to H×W; ``grid=None`` = per pixel."""
    import torch
    import torch.nn.functional as F

    g = size if grid is None else (grid, grid)
    u = rng.random((n, *g))
    keep = (u > subset_percent).astype(np.float64)
    if grid is None:
        return keep
    t = torch.from_numpy(keep)[:, None]
    return F.interpolate(t, size=tuple(size), mode="nearest-exact")[:, 0].numpy()


def fixed_masks(rng: np.random.Generator, n: int, shape: tuple[int, int, int], subset_size: int) -> np.ndarray:
    """Keep-masks [n,C,H,W]: exactly ``subset_size`` of the flattened C·H·W features perturbed, without
    replacement, channels independent (Quantus FaithfulnessCorrelation)."""
    total = int(np.prod(shape))
    k = min(int(subset_size), total)
    out = np.ones((n, total), dtype=np.float64)
    for r in range(n):
        out[r, rng.choice(total, size=k, replace=False)] = 0.0
    return out.reshape(n, *shape)


def correlation(delta: np.ndarray, attr: np.ndarray, kind: str = "spearman") -> float:
    """Spearman (average ranks) or Pearson correlation; NaN (a constant side) → 0 as xplique does."""
    from scipy.stats import pearsonr, spearmanr

    d = np.asarray(delta, dtype=np.float64)
    a = np.asarray(attr, dtype=np.float64)
    if np.ptp(d) == 0 or np.ptp(a) == 0:
        return 0.0
    r = spearmanr(d, a).statistic if kind == "spearman" else pearsonr(d, a).statistic
    r = float(r)
    return 0.0 if not np.isfinite(r) else r


def mufidelity_image(
    score_fn: Callable[[Any], Any],
    x: Any,
    phi: np.ndarray,
    baseline: Any,
    keep: np.ndarray,
    corr: str = "spearman",
    batch_size: int = 64,
) -> tuple[float, np.ndarray, np.ndarray]:
    """(ρ, Δ, a) for one image: Δ_r = s(x) − s(x'_r), a_r = Σ φ·(1 − m_r), x'_r = x⊙m + (1 − m)·β.

    x, baseline: [C,H,W] tensors; phi: [H,W] at input size; keep: [R,H,W] or [R,C,H,W] (1 = kept). ``score_fn``
    maps a batch [b,C,H,W] to scores [b] of the target.
    """
    import torch

    full = float(score_fn(x[None]).reshape(-1)[0])
    m_all = torch.as_tensor(keep, dtype=x.dtype, device=x.device)
    if m_all.ndim == 3:
        m_all = m_all[:, None]
    ys: list[float] = []
    for s in range(0, m_all.shape[0], batch_size):
        m = m_all[s:s + batch_size]
        batch = x[None] * m + (1 - m) * baseline[None]
        ys.extend(score_fn(batch).detach().double().cpu().numpy().reshape(-1).tolist())
    delta = full - np.asarray(ys, dtype=np.float64)
    ph = np.asarray(phi, dtype=np.float64)
    removed = 1.0 - np.asarray(keep, dtype=np.float64)
    if removed.ndim == 4:  # channels independent: a feature (c, p) carries φ_p
        attr = (removed * ph[None, None]).sum(axis=(1, 2, 3))
    else:
        attr = (removed * ph[None]).sum(axis=(1, 2))
    return correlation(delta, attr, corr), delta, attr
