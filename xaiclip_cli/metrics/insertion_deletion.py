"""Insertion/Deletion AUC: protocol (b) re-evaluated pixel rankings (four conventions) and protocol (a) recorded curves.

metrics.md §1-§2. Hand-written: xplique (TF), torchcam and RISE each hard-wire one convention, a model call per step
and their own map handling; here one batched engine serves all four conventions bit-exactly (the worked oracle of §2
and `benchmarks/metrics_crosscheck.py` against torchcam 0.5.0 check it). Feature order, counts and AUC rule are pure
NumPy; the perturbed images are built on the model's device in its input space (after preprocessing).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

Convention = Literal["xaiclip", "xplique", "torchcam", "rise"]
Mode = Literal["deletion", "insertion"]
CONVENTIONS: tuple[str, ...] = ("xaiclip", "xplique", "torchcam", "rise")

# What each convention records about itself (eval.json, metrics.md §0).
CONVENTION_FACTS: dict[str, dict[str, str]] = {
    "xaiclip": {"counts": "floor(i*N_max/s)", "x_axis": "actual fraction n_i/N", "tie_break": "stable_low_index",
                "auc_rule": "trapezoid on actual fractions, per image"},
    "xplique": {"counts": "np.linspace(0, floor(N*max_fraction), s+1).astype(int32)", "x_axis": "step index",
                "tie_break": "reversed np.argsort (ties: higher index first)",
                "auc_rule": "mean((y_i+y_{i+1})/2), equal spacing"},
    "torchcam": {"counts": "0, step, 2*step, ..., N with step = ceil(N/s)", "x_axis": "actual fraction n_i/N",
                 "tie_break": "stable_low_index", "auc_rule": "torch.trapezoid on counts/N, per image"},
    "rise": {"counts": "min(i*step, N), n = ceil(N/step)", "x_axis": "step index",
             "tie_break": "reversed np.argsort (ties: higher index first)",
             "auc_rule": "(sum(y) - y_0/2 - y_n/2)/n, equal spacing"},
}


class InvalidMap(ValueError):
    """A map that cannot be evaluated (NaN/inf, wrong shape): the image is skipped and counted by reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# ----------------------------------------------------------------------------------------------------- the map
def channel_mean(phi: np.ndarray) -> np.ndarray:
    """A 2-D map from φ: [H,W] as is, [C,H,W] or [H,W,C] (C ≤ 4) averaged over channels (metrics.md §2.1)."""
    a = np.asarray(phi, dtype=np.float64)
    if a.ndim == 2:
        return a
    if a.ndim == 3 and a.shape[0] <= 4 and a.shape[0] < a.shape[-1]:
        return a.mean(axis=0)
    if a.ndim == 3 and a.shape[-1] <= 4:
        return a.mean(axis=-1)
    raise InvalidMap("bad_shape", f"map of shape {tuple(a.shape)} is not H×W, C×H×W or H×W×C")


def check_finite(phi: np.ndarray) -> None:
    """Raise InvalidMap('nan') for a map holding NaN or inf (never averaged in, metrics.md §11)."""
    if not np.isfinite(phi).all():
        raise InvalidMap("nan", "map holds NaN or inf values")


def check_aspect(shape: Sequence[int], size: Sequence[int]) -> None:
    """Raise InvalidMap('bad_shape') when a map's aspect ratio differs from the image's (it cannot be registered;
    resizing would stretch it)."""
    h, w = int(shape[0]), int(shape[1])
    want = int(size[0]) / int(size[1])
    if abs(h / w - want) > 0.02 * want:  # 2 %: grids of odd strides round, stretched maps do not
        raise InvalidMap("bad_shape", f"map of size {h}×{w} does not match the {size[0]}×{size[1]} image")


def resize_bilinear(phi: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map, ``align_corners=False`` (torch, float64), identity at the same size."""
    if tuple(phi.shape) == tuple(size):
        return np.asarray(phi, dtype=np.float64)
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(phi, dtype=np.float64))[None, None]
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


def checked_map(phi: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """φ averaged over channels, checked (finite, same aspect as ``size``): raises InvalidMap with the reason."""
    m = channel_mean(phi)
    check_finite(m)
    check_aspect(m.shape, size)
    return m


def input_map(phi: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A checked map resized bilinearly to the model input (what MuFidelity and drop weigh pixels by)."""
    return resize_bilinear(checked_map(phi, size), size)


def cell_index_map(grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Pixel → cell of a grid, nearest with half-pixel centres (torch ``nearest-exact``): int64 [H,W]."""
    import torch
    import torch.nn.functional as F

    h, w = grid
    idx = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w)
    return F.interpolate(idx, size=tuple(size), mode="nearest-exact")[0, 0].numpy().astype(np.int64)


def feature_order(phi: np.ndarray, convention: str = "xaiclip") -> np.ndarray:
    """Feature indices, most important first: stable descending (ties: lower index first) or reversed argsort."""
    flat = np.asarray(phi, dtype=np.float64).reshape(-1)
    if convention in ("xplique", "rise"):
        return np.argsort(flat)[::-1].copy()  # the libraries' own (unstable, reversed) order
    return np.argsort(-flat, kind="stable")


def rank_of(order: np.ndarray) -> np.ndarray:
    """rank[feature] = its position in ``order`` (the inverse permutation)."""
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size, dtype=order.dtype)
    return rank


def pixel_ranks(phi: np.ndarray, size: tuple[int, int], unit: str = "input", convention: str = "xaiclip") -> np.ndarray:
    """Per-pixel rank at the model input size [H,W] (int64): pixel p is perturbed at step i iff rank[p] < n_i.

    ``unit='input'``: φ resized bilinearly, features are pixels (N = H·W). ``unit='grid'``: features are φ's own cells
    (every pixel of a cell shares its rank; N = h·w).
    """
    m = checked_map(phi, size)
    if unit == "input":
        r = resize_bilinear(m, size)
        return rank_of(feature_order(r, convention)).reshape(size)
    if unit == "grid":
        cell_rank = rank_of(feature_order(m, convention))
        return cell_rank[cell_index_map(m.shape, size)]
    raise ValueError(f"unknown unit {unit!r} (input, grid)")


def n_features(phi_shape: Sequence[int], size: tuple[int, int], unit: str) -> int:
    """N: pixels of the input (unit input) or cells of the map's grid (unit grid)."""
    if unit == "input":
        return int(size[0] * size[1])
    shp = tuple(phi_shape)
    return int(np.prod(shp[-2:] if len(shp) == 2 or shp[0] <= 4 else shp[:2]))


# ------------------------------------------------------------------------------------------------ counts, AUC
def counts(n: int, steps: int, convention: str = "xaiclip", max_fraction: float = 1.0,
           rise_step: int | None = None) -> np.ndarray:
    """Number of perturbed features after each step, from 0 (metrics.md §2 convention table)."""
    if n < 1 or steps < 1:
        raise ValueError("need at least one feature and one step")
    n_max = int(math.floor(n * max_fraction))
    if convention == "xaiclip":
        return np.array([(i * n_max) // steps for i in range(steps + 1)], dtype=np.int64)
    if convention == "xplique":
        return np.linspace(0, n_max, steps + 1).astype(np.int32).astype(np.int64)
    if convention == "torchcam":
        step = int(math.ceil(n / steps))
        return np.unique(np.minimum(np.arange(0, n + step, step), n)).astype(np.int64)
    if convention == "rise":
        step = int(rise_step or math.ceil(n / steps))
        k = int(math.ceil(n / step))
        return np.minimum(np.arange(k + 1) * step, n).astype(np.int64)
    raise ValueError(f"unknown convention {convention!r} ({', '.join(CONVENTIONS)})")


def x_axis(cnt: np.ndarray, n: int) -> np.ndarray:
    """The recorded x of each step: the actual fraction n_i/N (every convention's curve is saved on it)."""
    return np.asarray(cnt, dtype=np.float64) / float(n)


def auc(cnt: np.ndarray, n: int, y: np.ndarray, convention: str = "xaiclip") -> float:
    """One curve's AUC by the convention's rule (trapezoid on actual fractions, or its equal-spacing rule)."""
    y = np.asarray(y, dtype=np.float64)
    if convention in ("xaiclip", "torchcam"):
        x = x_axis(cnt, n)
        return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
    if convention == "xplique":
        return float(np.mean((y[1:] + y[:-1]) / 2.0))
    if convention == "rise":
        k = y.size - 1
        return float((y.sum() - y[0] / 2.0 - y[-1] / 2.0) / k)
    raise ValueError(f"unknown convention {convention!r}")


# ------------------------------------------------------------------------------------------------ baselines
def gaussian_kernel(size: int = 11, sigma: float = 5.0) -> np.ndarray:
    """Normalised 2-D Gaussian kernel (RISE's insertion substrate: 11×11, σ = 5)."""
    ax = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(ax**2) / (2 * sigma**2))
    k = np.outer(g, g)
    return k / k.sum()


def blur(x: Any, size: int = 11, sigma: float = 5.0) -> Any:
    """Per-channel Gaussian blur of a [B,C,H,W] tensor, zero 'same' padding (RISE)."""
    import torch
    import torch.nn.functional as F

    k = torch.as_tensor(gaussian_kernel(size, sigma), dtype=x.dtype, device=x.device)
    c = x.shape[1]
    w = k.expand(c, 1, size, size).contiguous()
    return F.conv2d(x, w, padding=size // 2, groups=c)


# Named baselines (metrics.md §2, §3); ``value:v`` is the one parametrised kind. What each means, in the words
# eval.json records as its ``space``.
BASELINES: tuple[str, ...] = ("black", "black-min", "white-max", "mean", "blur", "noise")
BASELINE_CHOICES = ", ".join((*BASELINES, "value:v"))
BASELINE_SPACES: dict[str, str] = {
    "black": "pixel 0 before normalisation, (0 - mean_c)/std_c (SMDL/LIMA)",
    "black-min": "per-sample minimum of the normalised input over all channels and pixels (Quantus 0.6.0 'black')",
    "white-max": "per-sample maximum of the normalised input over all channels and pixels (Quantus 0.6.0 'white')",
    "mean": "0 in normalised space (the mean colour)",
    "blur": "Gaussian blur (11x11, sigma 5) of the normalised input",
    "noise": "seeded uniform [0, 1) pixels before normalisation",
    "value": "constant in normalised space",
}


def parse_baseline(text: str) -> tuple[str, float | None]:
    """'black' | 'black-min' | 'white-max' | 'mean' | 'blur' | 'noise' | 'value:v' → (kind, v)."""
    t = str(text).strip().lower()
    if t in BASELINES:
        return t, None
    if t.startswith("value:"):
        try:
            return "value", float(t.split(":", 1)[1])
        except ValueError as exc:
            raise ValueError(f"baseline {text!r}: value:v needs a number") from exc
    raise ValueError(f"unknown baseline {text!r} ({BASELINE_CHOICES})")


def baseline_record(kind: str, value: float | None) -> dict[str, Any]:
    """The ``baseline`` entry of eval.json: {kind, space, value}."""
    return {"kind": kind, "space": BASELINE_SPACES[kind], "value": value}


def make_baseline(kind: str, x: Any, *, mean: Any, std: Any, value: float | None = None, seed: int = 0) -> Any:
    """Baseline images [B,C,H,W] in normalised space for inputs x (metrics.md §2 baseline table).

    ``mean``/``std`` are the per-channel normalisation constants (tensors [C]) of the model's preprocessing.
    """
    import torch

    mu = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    sd = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    if kind == "black":
        return ((0.0 - mu) / sd).expand_as(x).clone()
    if kind == "black-min":  # Quantus 0.6.0 perturb_baseline="black": min over channels and pixels, per sample
        return x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x).clone()
    if kind == "white-max":  # Quantus "white": the per-sample max
        return x.amax(dim=(1, 2, 3), keepdim=True).expand_as(x).clone()
    if kind == "mean":
        return torch.zeros_like(x)
    if kind == "value":
        return torch.full_like(x, float(value if value is not None else 0.0))
    if kind == "blur":
        return blur(x)
    if kind == "noise":
        rng = np.random.Generator(np.random.PCG64(seed))
        u = torch.as_tensor(rng.random(tuple(x.shape)), dtype=x.dtype, device=x.device)
        return (u - mu) / sd
    raise ValueError(f"unknown baseline kind {kind!r}")


# ------------------------------------------------------------------------------------------------ curves
ScoreFn = Callable[[Any, Any], Any]  # (images [b,C,H,W], target indices [b]) -> scores [b]


@dataclass
class CurvePlan:
    """Every (mode, image, step) job of a set of curves, mode-major, then image, then step (tensors on the device).

    ``img[j]``: the image of job j; ``thr[j]``: its n_i (features perturbed); ``ins[j]``: insertion or not;
    ``slots[mode][i]``: the slice of the jobs of image i's curve of that mode.
    """

    modes: list[str]
    img: Any
    thr: Any
    ins: Any
    slots: dict[str, list[slice]]
    size: int

    def curves(self, vals: np.ndarray) -> dict[str, list[np.ndarray]]:
        """{mode: one float64 curve per image} from the job values ``vals`` [size]."""
        return {m: [np.asarray(vals[sl], dtype=np.float64).copy() for sl in self.slots[m]] for m in self.modes}


def check_modes(mode: Mode | Sequence[Mode]) -> list[str]:
    """The modes as a list (ValueError for an unknown one)."""
    modes = [mode] if isinstance(mode, str) else list(mode)
    for m in modes:
        if m not in ("deletion", "insertion"):
            raise ValueError(f"unknown mode {m!r}")
    return modes


def plan_curves(b: int, cnt: Sequence[np.ndarray] | np.ndarray, modes: Sequence[str], device: Any) -> CurvePlan:
    """The jobs of ``b`` images' curves; ``cnt``: one counts array for all images or one per image."""
    import torch

    arr = np.asarray(cnt, dtype=object) if not isinstance(cnt, np.ndarray) else cnt
    per = list(cnt) if (isinstance(cnt, list) or (isinstance(arr, np.ndarray) and arr.ndim == 2)) else [cnt] * b
    # All jobs as arrays, built once: the batch loop only slices them.
    j_img, j_n, j_ins = [], [], []
    slots: dict[str, list[slice]] = {m: [] for m in modes}
    pos = 0
    for m in modes:
        for i in range(b):
            c = np.asarray(per[i], dtype=np.int64)
            j_img.append(np.full(c.size, i))
            j_n.append(c)
            j_ins.append(np.full(c.size, m == "insertion"))
            slots[m].append(slice(pos, pos + c.size))
            pos += c.size
    return CurvePlan(list(modes), torch.as_tensor(np.concatenate(j_img), device=device),
                     torch.as_tensor(np.concatenate(j_n), device=device),
                     torch.as_tensor(np.concatenate(j_ins), device=device), slots, pos)


def perturbed_batches(x: Any, baseline: Any, ranks: Any, plan: CurvePlan,
                      batch_size: int) -> Iterator[tuple[slice, Any]]:
    """(job slice, perturbed images [b,C,H,W]) of each forward batch of ``plan``, in job order.

    A batch is written run by run (the consecutive jobs of one image and mode), selecting straight from that
    image and its baseline: the same values as gathering every job's image, with a quarter of the memory traffic.
    """
    import torch

    ranks = torch.as_tensor(ranks, device=x.device)
    runs = [(sl.start, sl.stop, i, m == "insertion") for m in plan.modes for i, sl in enumerate(plan.slots[m])]
    dtype = torch.result_type(baseline, x)
    r = 0
    for start in range(0, plan.size, batch_size):
        stop = min(plan.size, start + batch_size)
        out = torch.empty((stop - start, *x.shape[1:]), dtype=dtype, device=x.device)
        while runs[r][1] <= start:
            r += 1
        k = r
        while k < len(runs) and runs[k][0] < stop:
            a, b, i, ins = runs[k]
            a, b = max(a, start), min(b, stop)
            thr = plan.thr[a:b].view(-1, 1, 1)
            # deletion: features ranked below n_i take the baseline; insertion: the others do
            use_base = (ranks[i] >= thr) if ins else (ranks[i] < thr)
            torch.where(use_base.unsqueeze(1), baseline[i], x[i], out=out[a - start:b - start])
            k += 1
        yield slice(start, stop), out


def perturbation_curves(
    score_fn: ScoreFn,
    x: Any,
    baseline: Any,
    ranks: Any,
    cnt: Sequence[np.ndarray] | np.ndarray,
    mode: Mode | Sequence[Mode],
    targets: Sequence[int] | None = None,
    batch_size: int = 64,
    prefetch: int = 2,
) -> Any:
    """Scores y_i for every image and step: deletion x with its first n_i features at the baseline, insertion the
    reverse. All (image, mode, step) triples are forwarded in batches of ``batch_size`` (the result never depends
    on it); giving both modes fills the batches across the two curves. ``prefetch`` batches are built ahead in a
    background thread while ``score_fn`` runs (0: in the calling thread; the values are the same either way).

    x, baseline: [B,C,H,W] on the model's device; ranks: [B,H,W] int64; cnt: one counts array for all or one per
    image. Returns a list of curves (one mode) or {mode: list of curves} (several modes).
    """
    import torch

    from xaiclip_cli.parallel.prefetch import read_ahead

    modes = check_modes(mode)
    b = int(x.shape[0])
    plan = plan_curves(b, cnt, modes, x.device)
    tg = np.arange(b) if targets is None else np.asarray(list(targets), dtype=np.int64)
    tg_all = torch.as_tensor(tg, device=x.device)[plan.img]
    vals = np.empty(plan.size, dtype=np.float64)
    for sl, batch in read_ahead(perturbed_batches(x, baseline, ranks, plan, batch_size), prefetch):
        vals[sl] = score_fn(batch, tg_all[sl]).detach().double().cpu().numpy().reshape(-1)
    res = plan.curves(vals)
    return res[modes[0]] if isinstance(mode, str) else res


# ------------------------------------------------------------------------------------- protocol (a): recorded
def smdl_curves(area_ins: np.ndarray, consistency: np.ndarray, collaboration: np.ndarray,
                x_del: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_ins, y_ins, x_del, y_del) of metrics.md §1 from the recorded lists (regions in selection order).

    area_ins[j] = nz(C_j)/P for j = 0..k; deletion x_j = 1 − nz(F − C_j)/P, which for disjoint regions is
    1 − (area_ins[k] − area_ins[j]) (used when ``x_del`` is not given).
    """
    a = np.asarray(area_ins, dtype=np.float64).reshape(-1)
    c = np.asarray(consistency, dtype=np.float64).reshape(-1)
    q = np.asarray(collaboration, dtype=np.float64).reshape(-1)
    k = c.size
    if a.size != k + 1 or q.size != k or k < 1:
        raise ValueError(f"recorded lists disagree: {a.size} areas, {c.size} consistency, {q.size} collaboration "
                         "(need k+1, k, k)")
    y_ins = np.concatenate([[1.0 - q[-1]], c])
    x_del = 1.0 - (a[-1] - a) if x_del is None else np.asarray(x_del, dtype=np.float64).reshape(-1)
    y_del = np.concatenate([[c[-1]], 1.0 - q])
    return a, y_ins, x_del, y_del


def sklearn_auc(x: np.ndarray, y: np.ndarray) -> float:
    """``sklearn.metrics.auc`` (trapezoid; the reference evaluator's call)."""
    from sklearn.metrics import auc as _auc

    return float(_auc(x, y))


def smdl_auc(area_ins: np.ndarray, consistency: np.ndarray, collaboration: np.ndarray,
             x_del: np.ndarray | None = None) -> tuple[float, float]:
    """(insertion AUC, deletion AUC) of one image's recorded SMDL curves (protocol (a))."""
    xi, yi, xd, yd = smdl_curves(area_ins, consistency, collaboration, x_del)
    return sklearn_auc(xi, yi), sklearn_auc(xd, yd)


def nonzero_fraction(img: np.ndarray) -> float:
    """nz(Z)/P: the fraction of pixels whose channel sum is ≠ 0 (uint8 [H,W,3])."""
    s = np.asarray(img).astype(np.int64).sum(axis=-1)
    return float(np.count_nonzero(s)) / float(s.size)


def legacy_item(npy_path: str | Path, json_path: str | Path) -> dict[str, np.ndarray]:
    """Recorded lists from the reference layout: ``npy`` uint8 [k,H,W,3] region images (each region shows only its
    own pixels) and the ``json`` with ``consistency_score``/``collaboration_score``; area_ins from cumulative sums."""
    regions = np.load(npy_path)
    if regions.ndim != 4 or regions.shape[-1] != 3:
        raise ValueError(f"{npy_path}: expected uint8 [k,H,W,3] region images, got shape {regions.shape}")
    data = json.loads(Path(json_path).read_text(encoding="utf-8"))
    try:
        c = np.asarray(data["consistency_score"], dtype=np.float64)
        q = np.asarray(data["collaboration_score"], dtype=np.float64)
    except KeyError as exc:
        raise ValueError(f"{json_path}: missing {exc.args[0]!r}") from exc
    full = regions.astype(np.int64).sum(axis=0)  # F, as the reference evaluator builds it
    cum = np.zeros(regions.shape[1:], dtype=np.int64)
    areas, x_del = [0.0], [1.0 - nonzero_fraction(full)]
    for r in regions:  # C_j = sum of the first j region images; F − C_j what remains
        cum = cum + r.astype(np.int64)
        areas.append(nonzero_fraction(cum))
        x_del.append(1.0 - nonzero_fraction(full - cum))
    return {"area_ins": np.asarray(areas), "x_del": np.asarray(x_del), "consistency": c, "collaboration": q}
