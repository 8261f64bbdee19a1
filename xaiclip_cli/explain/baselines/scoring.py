"""What the baselines explain: a differentiable target probability, fills in normalised space, input checks.

The CLIP target is the probability of the target class under the given logit scale s over the given prototypes
(softmax across classes, or a per-class sigmoid ``s·cos + b`` for SigLIP-style models), never the backend's own
scale, so that baseline maps and SMDL rankings explain the same number (smdl.md §4, §10).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from xaiclip_cli.errors import UsageError

# probs(x [B,3,H,W] normalised) -> [B,C] probabilities, differentiable w.r.t. x
ProbFn = Callable[[torch.Tensor], torch.Tensor]

FAMILIES = ("softmax", "sigmoid")


def is_clip_backend(obj: Any) -> bool:
    """True for a ClipBackend-like object (image tower + preprocessing), False for a scorer with ``probs``."""
    return all(hasattr(obj, a) for a in ("encode_image", "preprocess", "vision_module"))


def clip_probs(backend: Any, text_features: torch.Tensor, logit_scale: float, family: str = "softmax",
               logit_bias: float = 0.0) -> ProbFn:
    """probs(x) = softmax(s·f̂(x)·T̂ᵀ) (or sigmoid(s·cos + b) per class) on ``backend``'s image tower."""
    if family not in FAMILIES:
        raise UsageError(f"unknown score family {family!r} (softmax or sigmoid)")
    T = torch.as_tensor(text_features).detach().to(backend.device, torch.float32)
    if T.ndim != 2 or T.shape[0] < 2:
        raise UsageError(f"text features must be [C,d] with C >= 2 classes, got shape {list(T.shape)}")
    s = float(logit_scale)
    if not np.isfinite(s) or s <= 0:
        raise UsageError(f"logit scale must be a positive number, got {logit_scale!r}")
    b = float(logit_bias)

    def probs(x: torch.Tensor) -> torch.Tensor:
        g, _ = backend.encode_image(x)
        if g.shape[-1] != T.shape[1]:
            raise UsageError(f"text features have dimension {T.shape[1]}, the image tower gives {g.shape[-1]}")
        logits = g.float() @ T.t() * s + b
        return logits.softmax(dim=-1) if family == "softmax" else torch.sigmoid(logits)

    return probs


class ClassifierProbs:
    """softmax(model(x)) of a classifier, differentiable (the smdl ClassifierScorer scores under no_grad)."""

    def __init__(self, model: torch.nn.Module, n_classes: int | None, device: Any) -> None:
        self.model, self.n_classes, self.device = model, n_classes, device

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """[B,C] class probabilities."""
        return self.model(x).float().softmax(dim=-1)


def unwrap_scorer(obj: Any, text_features: Any, logit_scale: float | None, family: str,
                  logit_bias: float) -> tuple[Any, Any, float | None, str, float]:
    """An smdl scorer seen as what it scores: a ClipScorer → (its backend, prototypes, s, family, bias); a
    ClassifierScorer → a differentiable softmax of its model. Explicit text features and scale win when given."""
    inner = getattr(obj, "backend", None)
    if not is_clip_backend(obj) and inner is not None and is_clip_backend(inner) and hasattr(obj, "text"):
        return (inner, obj.text if text_features is None else text_features,
                getattr(obj, "logit_scale", None) if logit_scale is None else logit_scale,
                getattr(obj, "family", family), float(getattr(obj, "logit_bias", logit_bias)))
    model = getattr(obj, "model", None)
    if not is_clip_backend(obj) and isinstance(model, torch.nn.Module) and hasattr(obj, "features_and_probs"):
        return ClassifierProbs(model, getattr(obj, "n_classes", None), getattr(obj, "device", None)), \
            text_features, logit_scale, family, logit_bias
    return obj, text_features, logit_scale, family, logit_bias


def prob_fn(backend: Any, text_features: torch.Tensor | None, logit_scale: float | None, family: str,
            logit_bias: float = 0.0) -> ProbFn:
    """The probability function of a ClipBackend (text features required) or of a scorer exposing ``probs(x)``."""
    if is_clip_backend(backend):
        if text_features is None:
            raise UsageError("a CLIP backend needs text_features [C,d] (the class prototypes) to define the target")
        scale = backend.logit_scale if logit_scale is None else logit_scale
        return clip_probs(backend, text_features, scale, family, logit_bias)
    if callable(getattr(backend, "probs", None)):
        return backend.probs
    raise UsageError(f"cannot explain a {type(backend).__name__}: give a ClipBackend or a scorer with probs(x)")


def device_of(backend: Any) -> torch.device:
    """The device inputs must be on (a backend's or scorer's ``device``, else its first parameter's, else CPU)."""
    dev = getattr(backend, "device", None)
    if dev is not None:
        return torch.device(dev)
    inner = getattr(backend, "backend", None) or getattr(backend, "model", None)
    if inner is not None and getattr(inner, "device", None) is not None:
        return torch.device(inner.device)
    if isinstance(inner, torch.nn.Module):
        for p in inner.parameters():
            return p.device
    return torch.device("cpu")


def as_batch(x_norm: Any) -> tuple[torch.Tensor, bool]:
    """(x [B,3,H,W] float, was_single) from [3,H,W] or [B,3,H,W]; anything else is a UsageError."""
    x = torch.as_tensor(x_norm)
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[0] < 1 or min(x.shape[2:]) < 2:
        raise UsageError(f"x_norm must be a normalised image [3,S,S] or batch [B,3,S,S], got shape {list(x.shape)}")
    if not torch.is_floating_point(x):
        raise UsageError(f"x_norm must be a float tensor (normalised pixels), got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise UsageError("x_norm holds NaN or infinite values")
    return x.float(), single


def as_targets(target: int | Sequence[int], batch: int, n_classes: int | None) -> list[int]:
    """One class index per image (an int is shared); out of range or a wrong count is a UsageError."""
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        ts = [int(target)] * batch
    else:
        try:
            ts = [int(t) for t in target]  # type: ignore[union-attr]
        except (TypeError, ValueError) as exc:
            raise UsageError(f"target must be a class index or one index per image, got {target!r}") from exc
        if len(ts) != batch:
            raise UsageError(f"got {len(ts)} targets for {batch} images (one per image, or one int for all)")
    for t in ts:
        if t < 0 or (n_classes is not None and t >= n_classes):
            raise UsageError(f"target {t} out of range for {n_classes} classes")
    return ts


def normalise_constant(backend: Any, value: int, like: torch.Tensor) -> torch.Tensor | None:
    """normalise(v) of a constant uint8 image through the backend's own preprocessing ([3,H,W]), or None."""
    pre = getattr(backend, "preprocess", None)
    if pre is None:
        inner = getattr(backend, "backend", None)
        pre = getattr(inner, "preprocess", None)
    if pre is None:
        return None
    H, W = int(like.shape[-2]), int(like.shape[-1])
    t = pre(np.full((H, W, 3), value, dtype=np.uint8))
    return torch.as_tensor(t)[0].to(like.device, torch.float32)


def fill_tensor(backend: Any, fill: Any, like: torch.Tensor) -> torch.Tensor:
    """What removed pixels become, in normalised space [3,H,W]: ``black`` = normalise(0), ``mean`` = 0, or a tensor."""
    if isinstance(fill, (torch.Tensor, np.ndarray)):
        t = torch.as_tensor(fill, dtype=torch.float32).to(like.device)
        if tuple(t.shape) != tuple(like.shape[-3:]):
            raise UsageError(f"fill tensor must have shape {list(like.shape[-3:])}, got {list(t.shape)}")
        return t
    if fill == "mean":
        return torch.zeros(like.shape[-3:], device=like.device)
    if fill == "black":
        t = normalise_constant(backend, 0, like)
        if t is None:
            raise UsageError("fill 'black' needs the backend's preprocessing; pass fill=<normalised [3,S,S] tensor>")
        return t
    raise UsageError(f"unknown fill {fill!r} (black, mean, or a normalised [3,S,S] tensor)")


def to_pixels(backend: Any, x: torch.Tensor) -> np.ndarray:
    """Undo the backend's normalisation: x [3,H,W] → uint8 RGB [H,W,3] (for segmenters that need pixels)."""
    n0 = normalise_constant(backend, 0, x)
    n1 = normalise_constant(backend, 255, x)
    if n0 is None or n1 is None:
        raise UsageError("this method needs the image pixels: pass image=<uint8 RGB [S,S,3]> or segments=<labels>")
    rgb = (x.float() - n0) / (n1 - n0)
    return (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
