"""The `attrib show` figure and summary: region borders, ranked heat map, insertion/deletion curves, top-m regions.

Input is the compact result of one image (the npz keys of smdl.md §8). Curves and AUCs follow metrics.md §1 (the
reference evaluator): insertion x = ``area_ins``, y = [1 − q_k] + c_j; deletion x = 1 − remaining non-black
fraction, y = [c_k] + (1 − q_j); AUC = ``sklearn.metrics.auc`` per image. Headless (Agg canvas, no pyplot), no
named styles. Small inputs (the toy models' 64 px) are enlarged with nearest-neighbour for display only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from xaiclip_cli.errors import UsageError

REQUIRED = ("labels", "order", "consistency", "collaboration", "objective", "area_ins", "area_del")
DISPLAY_MIN = 256  # smallest displayed side in pixels (64 px inputs are shown 4x, nearest)


def _arr(result: Mapping[str, Any], key: str) -> np.ndarray:
    if key not in result:
        raise UsageError(f"attrib result lacks {key!r} (need {', '.join(REQUIRED)})")
    return np.asarray(result[key])


def check_result(result: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of a result with consistent lengths (k orders, k+1 areas); a UsageError names what is wrong."""
    r = {k: _arr(result, k) for k in REQUIRED}
    labels, order = r["labels"], r["order"].astype(np.int64).ravel()
    if labels.ndim != 2:
        raise UsageError(f"labels must be a 2-D region map, got shape {list(labels.shape)}")
    k = int(order.size)
    if k < 1:
        raise UsageError("attrib result has an empty order (no region was ranked)")
    for key in ("consistency", "collaboration", "objective"):
        if r[key].ravel().size != k:
            raise UsageError(f"{key} has {r[key].size} values for {k} ranked regions")
    for key in ("area_ins", "area_del"):
        if r[key].ravel().size != k + 1:
            raise UsageError(f"{key} has {r[key].size} values, expected k+1 = {k + 1}")
    for key in ("consistency", "collaboration", "objective", "area_ins", "area_del"):
        r[key] = r[key].astype(np.float64).ravel()
        if not np.isfinite(r[key]).all():
            raise UsageError(f"{key} holds NaN or infinite values")
    for key in ("area_ins", "area_del"):  # both are x axes (smdl.md §8): fractions, non-decreasing by construction
        a = r[key]
        if a.min() < -1e-6 or a.max() > 1 + 1e-6 or (np.diff(a) < -1e-6).any():
            raise UsageError(f"{key} must be non-decreasing fractions in [0, 1] (the curve's x axis)")
    r["order"] = order
    return r


def region_ids(labels: np.ndarray, order: np.ndarray) -> np.ndarray:
    """The label id of each ranked entry: ``order`` holds label ids (smdl.md §3: ids as returned, never
    renumbered); an order that only makes sense as indices into the ascending ids is mapped through them."""
    ids = np.unique(labels)
    order = np.asarray(order, dtype=np.int64)
    if np.isin(order, ids).all():
        return order
    if order.min() >= 0 and order.max() < len(ids):
        return ids[order]
    raise UsageError(f"order names regions {sorted(set(order.tolist()) - set(ids.tolist()))[:5]} absent from labels")


def rank_map(labels: np.ndarray, order: np.ndarray, smooth: float = 0.0) -> np.ndarray:
    """float32 [S,S]: pixels of the j-th ranked region (0-based) get k − j, unranked pixels 0; optional Gaussian σ."""
    if smooth < 0 or not math.isfinite(smooth):
        raise UsageError(f"--smooth must be >= 0 pixels, got {smooth}")
    ids = region_ids(labels, order)
    k = len(ids)
    value = np.zeros(int(max(labels.max(), ids.max())) + 1 - min(0, int(labels.min())), dtype=np.float32)
    offset = -min(0, int(labels.min()))
    value[ids + offset] = k - np.arange(k, dtype=np.float32)
    out = value[labels.astype(np.int64) + offset]
    if smooth > 0:
        from scipy.ndimage import gaussian_filter

        out = gaussian_filter(out, sigma=float(smooth), mode="nearest")
    return out.astype(np.float32)


def curves(result: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Insertion and deletion curves (x, y; k+1 points each) as the reference evaluator draws them.

    ``area_del`` is already the deletion x axis (1 − the non-black share left after removing the first j regions).
    """
    from xaiclip_cli.metrics.insertion_deletion import smdl_curves

    r = check_result(result)
    xi, yi, xd, yd = smdl_curves(r["area_ins"], r["consistency"], r["collaboration"], r["area_del"])
    return {"ins_x": xi, "ins_y": yi, "del_x": xd, "del_y": yd}


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """Insertion/deletion AUC (metrics.md §1, sklearn.metrics.auc), objective maximum, region counts."""
    from xaiclip_cli.explain.smdl.results import recorded_auc

    r = check_result(result)
    ins, dele = recorded_auc(r)  # the one formula eval smdl and attrib merge use too
    j = int(np.argmax(r["objective"]))  # first maximum, as the reference's smdl_score_max_index
    out: dict[str, Any] = {
        "insertion_auc": ins,
        "deletion_auc": dele,
        "objective_max": float(r["objective"][j]),
        "objective_max_index": j,
        "objective_max_regions": j + 1,
        "objective_max_area": float(r["area_ins"][j + 1]),
        "regions": int(np.unique(r["labels"]).size),
        "ranked": int(r["order"].size),
    }
    for key in ("p_full", "p_black"):
        if key in result:
            out[key] = float(np.asarray(result[key]))
    return out


def _enlarge(a: np.ndarray, f: int) -> np.ndarray:
    return a if f == 1 else np.repeat(np.repeat(a, f, axis=0), f, axis=1)


def _title(result: Mapping[str, Any]) -> str:
    parts = []
    for key, label in (("stem", ""), ("path", ""), ("target_name", "target "), ("target", "target "),
                       ("prediction", "predicted ")):
        if key in result and not (key == "target" and "target_name" in result) and not (
                key == "path" and "stem" in result):
            parts.append(f"{label}{np.asarray(result[key]).item() if np.ndim(result[key]) == 0 else result[key]}")
    return " | ".join(str(p) for p in parts)


def render(result: Mapping[str, Any], image_rgb: np.ndarray, path: str | Path, *, top_m: int = 5,
           smooth: float = 0.0, title: str | None = None) -> Path:
    """Write the four-panel PNG of one attribution result to ``path`` (temporary name, then renamed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from skimage.segmentation import find_boundaries

    from xaiclip_cli.viz.overlay import as_rgb

    r = check_result(result)
    if isinstance(top_m, bool) or not isinstance(top_m, (int, np.integer)) or top_m < 1:
        raise UsageError(f"--top must be an integer >= 1, got {top_m!r}")
    labels = r["labels"].astype(np.int64)
    rgb = as_rgb(np.asarray(image_rgb))
    if rgb.shape[:2] != labels.shape:
        raise UsageError(f"image is {rgb.shape[1]}x{rgb.shape[0]} px but the labels are "
                         f"{labels.shape[1]}x{labels.shape[0]}: pass the image at model size")
    ids = region_ids(labels, r["order"])
    k, m = len(ids), min(int(top_m), len(ids))
    info = summary(result)
    cv = curves(result)
    ranks = rank_map(labels, r["order"], smooth)

    f = max(1, math.ceil(DISPLAY_MIN / max(labels.shape)))
    big_rgb, big_lab = _enlarge(rgb, f), _enlarge(labels, f)
    H, W = big_lab.shape

    fig = Figure(figsize=(17, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1.18, 1, 1.35]})

    # (a) region borders
    edges = find_boundaries(big_lab, mode="inner")
    shown = big_rgb.copy()
    shown[edges] = (255, 230, 0)
    axes[0].imshow(shown, interpolation="nearest")
    axes[0].set_title(f"{info['regions']} regions", fontsize=10)

    # (b) ranked heat map over the image
    axes[1].imshow(big_rgb, interpolation="nearest")
    im = axes[1].imshow(_enlarge(ranks, f), cmap="jet", alpha=0.55, vmin=0.0, vmax=float(k),
                        interpolation="nearest")
    cb = fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.03)
    cb.set_label("k − position (higher = ranked earlier)", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    axes[1].set_title("ranked regions" + (f" (smoothed, σ={smooth:g} px)" if smooth > 0 else ""), fontsize=10)

    # (c) the top-m kept regions, the rest dimmed, with their ranks
    kept = np.isin(big_lab, ids[:m])
    dim = (big_rgb.astype(np.float32) * 0.25 + 40).astype(np.uint8)
    top = np.where(kept[..., None], big_rgb, dim)
    top[find_boundaries(np.where(kept, big_lab, -1), mode="inner") & kept] = (255, 230, 0)
    axes[2].imshow(top, interpolation="nearest")
    for j, rid in enumerate(ids[:m]):
        ys, xs = np.nonzero(big_lab == rid)
        if ys.size:
            # the region's own pixel nearest its centroid (centroids of non-convex regions can fall outside)
            cy, cx = ys.mean(), xs.mean()
            i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
            axes[2].text(xs[i], ys[i], str(j + 1), ha="center", va="center", fontsize=9, fontweight="bold",
                         color="black", bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                                              "alpha": 0.8})
    area = float(r["area_ins"][m])
    axes[2].set_title(f"top {m} of {k} kept ({area:.0%} of image)", fontsize=10)
    for ax in axes[:3]:
        ax.set_xlim(-0.5, W - 0.5)
        ax.set_ylim(H - 0.5, -0.5)
        ax.axis("off")

    # (d) insertion and deletion curves, objective maximum marked
    ax = axes[3]
    ax.plot(cv["ins_x"], cv["ins_y"], "-o", color="tab:blue", ms=2.5, lw=1.5,
            label=f"insertion (AUC {info['insertion_auc']:.3f})")
    ax.plot(cv["del_x"], cv["del_y"], "-o", color="tab:red", ms=2.5, lw=1.5,
            label=f"deletion (AUC {info['deletion_auc']:.3f})")
    j = info["objective_max_index"]
    ax.axvline(cv["ins_x"][j + 1], color="0.4", ls=":", lw=1)
    ax.plot([cv["ins_x"][j + 1]], [cv["ins_y"][j + 1]], marker="*", ms=14, color="gold", mec="black", ls="none",
            label=f"max objective ({j + 1} regions, F={info['objective_max']:.3f})", zorder=5)
    ax.set_xlim(-0.02, 1.02)  # markers at 0 and 1 stay whole
    ymax = max(1.0, float(np.max(cv["ins_y"])), float(np.max(cv["del_y"])))
    ax.set_ylim(-0.02, ymax * 1.42)  # the legend lives above the curves, never on them
    ax.set_yticks(np.linspace(0, 1, 6) * ymax)
    ax.set_xlabel("fraction of the image's non-black pixels kept (ins.) / removed (del.)", fontsize=8)
    ax.set_ylabel("target probability", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", framealpha=0.9)
    ax.set_title("insertion / deletion", fontsize=10)

    head = title if title is not None else _title(result)
    extra = []
    for key in ("p_full", "p_black"):
        if key in info:
            extra.append(f"{key} {info[key]:.3f}")
    sup = " | ".join(p for p in (head, ", ".join(extra)) if p)
    if sup:
        fig.suptitle(sup, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
