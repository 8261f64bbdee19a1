"""Average Drop, Increase in Confidence and Average Gain (Chattopadhay et al. 2018; xplique) — metrics.md §4.

A few lines on the model's scores, so hand-written (torchcam/xplique/pytorch-grad-cam each fix one variant; the
variants are selectable here and recorded).
"""

from __future__ import annotations

import numpy as np


def minmax(m: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Min-max normalise to [0,1] (a constant map becomes all zeros; eps as xplique)."""
    a = np.asarray(m, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo + eps) if hi > lo else np.zeros_like(a)


def drop_values(y: np.ndarray, o: np.ndarray, variant: str = "relative") -> dict[str, np.ndarray]:
    """Per-image drop (relative max(0,Y−O)/Y or absolute max(0,Y−O)), increase 1[O>Y] and gain ReLU(O−Y)/(1−Y)."""
    y = np.asarray(y, dtype=np.float64)
    o = np.asarray(o, dtype=np.float64)
    diff = np.maximum(0.0, y - o)
    if variant == "relative":
        if np.any(y <= 0):
            raise ValueError("relative average drop needs scores Y > 0 (use --score softmax or sigmoid, or "
                             "--ad-variant absolute)")
        drop = diff / y
    elif variant == "absolute":
        drop = diff
    else:
        raise ValueError(f"unknown variant {variant!r} (relative, absolute)")
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(y < 1.0, np.maximum(0.0, o - y) / (1.0 - y), 0.0)
    return {"average_drop": drop, "increase_in_confidence": (o > y).astype(np.float64), "average_gain": gain}
