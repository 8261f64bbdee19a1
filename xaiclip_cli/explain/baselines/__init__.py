"""`attrib baseline` saliency maps (smdl.md §10): gradcam, scorecam, lime, rise, gradient → float32 [S,S] maps.

``compute_map`` explains the target class probability (CLIP: softmax over the class prototypes at logit scale s,
or per-class sigmoid) of a normalised image; removed pixels take the fill in normalised space (black =
normalise(0), mean = 0). RISE and LIME are written here (no well-kept PyTorch library implements them with this
target and these fills: xplique is TensorFlow and replaces the contrib OpenCV, see the working rules); their
random draws use NumPy PCG64 seeded by ``seed``.

Example (what `attrib baseline` does per image)::

    x_norm, fill_norm = prepare(backend, image_bgr, bgr_compat=False, fill="black")   # smdl.pipeline
    m = compute_map("rise", backend, x_norm, target, text_features=T, logit_scale=s, seed=0, n=4000,
                    fill=fill_norm)   # lime/rise take black|mean or any normalised [3,S,S] fill (e.g. blur)
    np.save(out / "maps" / "rise" / name / f"{stem}.npy", m)                   # float32 [S,S]

Maps are unnormalised (Grad-CAM/Score-CAM after ReLU and upsampling, as `cam`'s ``map``; LIME coefficients can
be negative); rank-based consumers (prior-patch, eval) do not need a scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from xaiclip_cli.errors import UsageError
from xaiclip_cli.explain.baselines.scoring import (
    as_batch,
    as_targets,
    device_of,
    fill_tensor,
    is_clip_backend,
    prob_fn,
    to_pixels,
    unwrap_scorer,
)

METHODS = ("gradcam", "scorecam", "lime", "rise", "gradient")

# Parameters each method accepts, with defaults (smdl.md §10); anything else is refused.
PARAMS: dict[str, dict[str, Any]] = {
    "gradcam": {"layer": None, "align": "receptive-field", "logit_bias": 0.0},
    "scorecam": {"layer": None, "align": "receptive-field", "score_batch": 16, "logit_bias": 0.0},
    "lime": {"samples": 1000, "kernel_width": 0.25, "alpha": 1.0, "batch": 64, "fill": "black", "image": None,
             "segments": None, "kernel_size": None, "max_dist": 250.0, "ratio": 0.2, "quickshift_input": "reference",
             "logit_bias": 0.0},
    "rise": {"n": 4000, "grid": 7, "p": 0.5, "batch": 64, "fill": "black", "logit_bias": 0.0},
    "gradient": {"batch": 64, "logit_bias": 0.0},
}


def _params(method: str, given: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(PARAMS[method]))
    if unknown:
        raise UsageError(f"unknown parameter(s) {', '.join(unknown)} for --method {method} "
                         f"(accepts {', '.join(sorted(PARAMS[method]))})")
    return {**PARAMS[method], **given}


def resolved_params(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parameters a call uses (defaults filled in), JSON-friendly, for run records; arrays are summarised."""
    if method not in METHODS:
        raise UsageError(f"unknown baseline method {method!r} (choose from {', '.join(METHODS)})")
    out: dict[str, Any] = {}
    for k, v in _params(method, dict(params or {})).items():
        if isinstance(v, (np.ndarray, torch.Tensor, list, tuple)):
            out[k] = f"given ({type(v).__name__})"
        else:
            out[k] = v
    return out


def _positive_int(name: str, v: Any, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < low:
        raise UsageError(f"{name} must be an integer >= {low}, got {v!r}")
    return int(v)


def _n_classes(text_features: Any) -> int | None:
    return None if text_features is None else int(torch.as_tensor(text_features).shape[0])


def compute_map(method: str, backend: Any, x_norm: torch.Tensor, target: int | Sequence[int], *,
                text_features: torch.Tensor | None = None, logit_scale: float | None = None,
                family: str = "softmax", seed: int = 0, **params: Any) -> np.ndarray:
    """Saliency map float32 [S,S] (or [B,S,S] for a batch) of ``target`` for a normalised image ``x_norm``.

    ``backend`` is a ClipBackend (then ``text_features`` [C,d] unit prototypes and ``logit_scale`` s define the
    target probability; s defaults to the model's), an smdl ClipScorer (its backend, prototypes, s, family and
    bias are used) or, for lime/rise/gradient, an smdl ClassifierScorer or any object with ``probs(x)``.
    Per-method ``params`` are in ``PARAMS`` (e.g. ``n`` for rise, ``samples`` for lime, ``fill`` black|mean|tensor).
    """
    if method not in METHODS:
        raise UsageError(f"unknown baseline method {method!r} (choose from {', '.join(METHODS)})")
    p = _params(method, params)
    backend, text_features, logit_scale, family, p["logit_bias"] = unwrap_scorer(
        backend, text_features, logit_scale, family, float(p["logit_bias"]))
    x, single = as_batch(x_norm)
    x = x.to(device_of(backend))
    if is_clip_backend(backend):
        backend.vision_module().eval()  # dropout/batch-norm statistics off, as cam does: batch maps = single maps
    n_classes = _n_classes(text_features)
    if n_classes is None:
        n_classes = getattr(backend, "n_classes", None)
    targets = as_targets(target, int(x.shape[0]), n_classes)
    seed = _positive_int("seed", seed, low=0)
    if method in ("gradcam", "scorecam"):
        out = _cam(method, backend, x, targets, text_features, logit_scale, family, p)
    else:
        probs = prob_fn(backend, text_features, logit_scale, family, float(p["logit_bias"]))
        if method == "gradient":
            from xaiclip_cli.explain.baselines.gradient import gradient_maps

            out = gradient_maps(probs, x, targets, batch=_positive_int("batch", p["batch"])).cpu().numpy()
        elif method == "rise":
            out = _rise(backend, probs, x, targets, p, seed)
        else:
            out = _lime(backend, probs, x, targets, p, seed)
    out = np.ascontiguousarray(out, dtype=np.float32)
    return out[0] if single else out


def _cam(method: str, backend: Any, x: torch.Tensor, targets: list[int], text_features: Any,
         logit_scale: float | None, family: str, p: dict[str, Any]) -> np.ndarray:
    from xaiclip_cli.explain.baselines.cams import cam_maps
    from xaiclip_cli.explain.baselines.scoring import FAMILIES

    if not is_clip_backend(backend):
        raise UsageError(f"--method {method} needs a CLIP backend (the cam engine hooks its image tower)")
    if text_features is None:
        raise UsageError("a CLIP backend needs text_features [C,d] (the class prototypes) to define the target")
    if family not in FAMILIES:
        raise UsageError(f"unknown score family {family!r} (softmax or sigmoid)")
    if p["align"] not in ("receptive-field", "half-pixel"):
        raise UsageError(f"unknown align {p['align']!r} (receptive-field or half-pixel)")
    scale = backend.logit_scale if logit_scale is None else float(logit_scale)
    T = torch.as_tensor(text_features, dtype=torch.float32)
    maps, _ = cam_maps(backend, method, x, targets, T, scale, family, float(p["logit_bias"]), layer=p["layer"],
                       score_batch=_positive_int("score_batch", p.get("score_batch", 16)), align=p["align"])
    return maps.detach().cpu().numpy()


def _rise(backend: Any, probs: Any, x: torch.Tensor, targets: list[int], p: dict[str, Any], seed: int) -> np.ndarray:
    from xaiclip_cli.explain.baselines.rise import rise_maps

    prob = p["p"]
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 < float(prob) < 1:
        raise UsageError(f"rise p (keep probability) must be in (0, 1), got {prob!r}")
    grid = _positive_int("rise grid", p["grid"])
    if grid > min(x.shape[-2:]):
        raise UsageError(f"rise grid {grid} is finer than the {int(x.shape[-1])}-px image")
    fill = fill_tensor(backend, p["fill"], x[0])
    return rise_maps(probs, x, targets, fill, n=_positive_int("rise n", p["n"]), grid=grid, p=float(prob),
                     batch=_positive_int("batch", p["batch"]), seed=seed).cpu().numpy()


def _lime(backend: Any, probs: Any, x: torch.Tensor, targets: list[int], p: dict[str, Any], seed: int) -> np.ndarray:
    from xaiclip_cli.explain.baselines.lime import lime_map, quickshift_segments

    samples = _positive_int("lime samples", p["samples"], low=2)
    width = p["kernel_width"]
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not float(width) > 0:
        raise UsageError(f"lime kernel width must be > 0, got {width!r}")
    fill = fill_tensor(backend, p["fill"], x[0])
    out = []
    for b in range(x.shape[0]):
        seg = _per_image(p["segments"], b, x.shape[0], "segments")
        if seg is None:
            img = _per_image(p["image"], b, x.shape[0], "image")
            img = to_pixels(backend, x[b]) if img is None else np.asarray(img)
            seg = quickshift_segments(img, p["kernel_size"], float(p["max_dist"]), float(p["ratio"]),
                                      p["quickshift_input"])
        out.append(lime_map(probs, x[b], targets[b], fill, np.asarray(seg), samples=samples,
                            kernel_width=float(width), alpha=float(p["alpha"]),
                            batch=_positive_int("batch", p["batch"]), seed=seed))
    return np.stack(out)


def _per_image(value: Any, b: int, batch: int, name: str) -> Any:
    """The b-th of a per-image argument: one array for a single image, or a stack/list with one per image."""
    if value is None:
        return None
    arr = value if isinstance(value, (list, tuple)) else np.asarray(value)
    single_ndims = (2, 3) if name == "image" else (2,)  # a grey image is refused later with its own message
    if not isinstance(arr, (list, tuple)) and arr.ndim in single_ndims:
        if batch != 1:
            raise UsageError(f"{name}: give one per image for a batch of {batch}")
        return arr
    if len(arr) != batch:
        raise UsageError(f"{name}: got {len(arr)} for {batch} images")
    return arr[b]


__all__ = ["METHODS", "PARAMS", "compute_map", "resolved_params"]
