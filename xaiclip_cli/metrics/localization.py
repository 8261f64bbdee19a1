"""Localisation against ground-truth masks: pointing game, energy pointing game, IoU/Dice@t, pixel AUPRC (§5, §8).

The pointing game follows TorchRay (strict tolerance disk, first row-major peak); AUPRC is
``sklearn.metrics.average_precision_score``; Otsu is ``cv2.threshold(..., THRESH_OTSU)`` on the uint8 min-max map.
"""

from __future__ import annotations

import numpy as np

from xaiclip_cli.metrics.drop import minmax
from xaiclip_cli.metrics.insertion_deletion import (
    InvalidMap,
    channel_mean,
    check_aspect,
    check_finite,
    resize_bilinear,
)


def prepare(phi: np.ndarray, mask_shape: tuple[int, int]) -> np.ndarray:
    """The map after ReLU, bilinearly resized to the mask resolution (float64); NaN → InvalidMap."""
    m = channel_mean(phi)
    check_finite(m)
    check_aspect(m.shape, mask_shape)
    return resize_bilinear(np.maximum(m, 0.0), mask_shape)


def check_mask(mask: np.ndarray) -> np.ndarray:
    """Bool mask; an empty one raises InvalidMap('empty_mask') (skipped and counted)."""
    g = np.asarray(mask).astype(bool)
    if g.ndim != 2:
        raise InvalidMap("bad_mask", f"mask of shape {g.shape} is not H×W")
    if not g.any():
        raise InvalidMap("empty_mask", "mask is empty")
    return g


def peak(m: np.ndarray) -> tuple[int, int]:
    """(row, col) of the maximum, first in row-major order among ties."""
    i = int(np.argmax(m))
    return divmod(i, m.shape[1])


def pointing_hit(m: np.ndarray, g: np.ndarray, tol: float = 15.0) -> bool:
    """TorchRay hit: some mask pixel q with ‖q − p*‖² < tol² (strict); tol = 0 means G[p*]."""
    r, c = peak(m)
    if tol <= 0:
        return bool(g[r, c])
    rr, cc = np.nonzero(g)
    return bool(np.any((rr - r) ** 2 + (cc - c) ** 2 < tol * tol))


def energy(m: np.ndarray, g: np.ndarray) -> float | None:
    """Energy pointing game Σ_G m / Σ m on the min-max map; None when Σm = 0 (skipped)."""
    mm = minmax(m)
    tot = float(mm.sum())
    return None if tot <= 0 else float(mm[g].sum() / tot)


def otsu_threshold(m: np.ndarray) -> float:
    """Otsu threshold of the min-max map in [0,1] (cv2 on uint8)."""
    import cv2

    u8 = np.round(minmax(m) * 255).astype(np.uint8)
    t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(t) / 255.0


def iou_dice(m: np.ndarray, g: np.ndarray, t: float, strict: bool = False) -> tuple[float, float]:
    """(IoU, Dice) of B = 1[minmax(m) ≥ t] (``strict``: > t, cv2's THRESH_BINARY rule for Otsu) against G."""
    mm = minmax(m)
    b = mm > t if strict else mm >= t
    inter = float(np.count_nonzero(b & g))
    union = float(np.count_nonzero(b | g))
    nb, ng = float(np.count_nonzero(b)), float(np.count_nonzero(g))
    return (inter / union if union else 0.0), (2 * inter / (nb + ng) if nb + ng else 0.0)


def auprc(m: np.ndarray, g: np.ndarray) -> float:
    """Pixel AUPRC: ``average_precision_score(G, minmax(m))`` (threshold-free, Arun et al.)."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(g.ravel().astype(int), minmax(m).ravel()))


def parse_thresholds(text: str) -> list[float] | str:
    """'0.5' | '0.2,0.5' | 'a:b:step' (inclusive) | 'otsu' | 'tuned'."""
    t = str(text).strip().lower()
    if t in ("otsu", "tuned"):
        return t
    if ":" in t:
        parts = [float(p) for p in t.split(":")]
        if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
            raise ValueError(f"thresholds {text!r}: use a:b:step with a ≤ b and step > 0")
        n = int(np.floor((parts[1] - parts[0]) / parts[2] + 1e-9)) + 1
        return [round(parts[0] + i * parts[2], 10) for i in range(n)]
    vals = [float(p) for p in t.split(",") if p.strip()]
    if not vals or any(v < 0 or v > 1 for v in vals):
        raise ValueError(f"thresholds {text!r}: values must lie in [0, 1]")
    return vals


def image_metrics(phi: np.ndarray, mask: np.ndarray, thresholds: list[float], tol: float = 15.0,
                  otsu: bool = False) -> dict[str, float | None]:
    """Every localisation value of one map and mask (mask resolution); keys iou@t/dice@t per threshold."""
    g = check_mask(mask)
    m = prepare(phi, g.shape)
    out: dict[str, float | None] = {
        "pointing_hit": float(pointing_hit(m, g, tol)),
        "energy": energy(m, g),
        "chance": float(g.mean()),
        "auprc": auprc(m, g) if m.max() > m.min() else None,
        "mask_area": float(g.mean()),
    }
    for t in thresholds:
        i, d = iou_dice(m, g, t)
        out[f"iou@{t:g}"], out[f"dice@{t:g}"] = i, d
    if thresholds:
        out["iou_mean"] = float(np.mean([out[f"iou@{t:g}"] for t in thresholds]))
    if otsu:
        t = otsu_threshold(m)
        out["otsu_t"] = t
        out["iou@otsu"], out["dice@otsu"] = iou_dice(m, g, t, strict=True)
    return out


def tune_threshold(maps: list[np.ndarray], masks: list[np.ndarray], classes: list[int],
                   grid: list[float] | None = None) -> dict[int, float]:
    """Per class, the t in 0.2:0.8:0.05 maximising mean IoU on the given (validation) maps (Saporta et al.)."""
    grid = grid or [round(0.2 + 0.05 * i, 10) for i in range(13)]
    best: dict[int, float] = {}
    for c in sorted(set(classes)):
        idx = [i for i, k in enumerate(classes) if k == c]
        prepared = [(prepare(maps[i], np.asarray(masks[i]).shape), np.asarray(masks[i]).astype(bool)) for i in idx]
        scores = [np.mean([iou_dice(m, g, t)[0] for m, g in prepared]) for t in grid]
        best[c] = float(grid[int(np.argmax(scores))])  # first t among ties
    return best


def area_tertiles(areas: np.ndarray) -> np.ndarray:
    """'small'/'medium'/'large' per mask by the tertiles of the evaluated mask areas."""
    a = np.asarray(areas, dtype=np.float64)
    q1, q2 = np.quantile(a, [1 / 3, 2 / 3])
    return np.where(a <= q1, "small", np.where(a <= q2, "medium", "large"))


def first_regions_share(labels: np.ndarray, order: np.ndarray, mask: np.ndarray, k: int) -> dict[str, float]:
    """How much of an attribution order's first k regions lies on a mask, with the chance level of each measure.

    ``pixel_share``: share of the first k regions' pixels inside the mask (chance: the mask's area share).
    ``region_share``: share of the first k regions that lie mostly (> 50 % of their pixels) inside the mask
    (chance: that share over all regions of the division). ``labels`` is the region label map, ``order`` region ids.
    """
    lab = np.asarray(labels)
    g = np.asarray(mask).astype(bool)
    if lab.shape != g.shape:
        raise ValueError(f"label map {lab.shape} and mask {g.shape} differ in size")
    ids = np.unique(lab)
    # Pixels and inside-pixels per region id, in one pass each (bincount over the dense index of each id).
    dense = np.searchsorted(ids, lab)
    size = np.bincount(dense.ravel(), minlength=len(ids))
    inside = np.bincount(dense.ravel(), weights=g.ravel().astype(np.float64), minlength=len(ids))
    first = np.searchsorted(ids, np.asarray(order)[: int(k)])
    mostly = inside / size > 0.5
    return {"pixel_share": float(inside[first].sum() / size[first].sum()), "area_share": float(g.mean()),
            "region_share": float(mostly[first].mean()), "region_chance": float(mostly.mean())}
