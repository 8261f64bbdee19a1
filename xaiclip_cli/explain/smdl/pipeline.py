"""One image through SMDL: read and resize (BGR uint8), normalise once, divide, attribute (smdl.md §2, §7)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.explain.smdl.regions import divide, elements
from xaiclip_cli.explain.smdl.search import SmdlConfig, SmdlResult, attribute

FILLS = ("black", "mean", "blur")


def bgr_at_size(image: np.ndarray, size: int) -> np.ndarray:
    """An RGB (or grey) uint8 array as the S×S BGR uint8 image SMDL divides (bilinear resize, as `attrib run`)."""
    import cv2

    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise XaiclipError(f"image has dtype {a.dtype}, expected uint8")
    if a.ndim == 2 or a.shape[2] == 1:
        a = np.repeat(a.reshape(a.shape[0], a.shape[1], 1), 3, axis=2)
    bgr = np.ascontiguousarray(a[:, :, 2::-1])
    if bgr.shape[:2] != (size, size):
        bgr = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_LINEAR)
    return bgr


def read_image_bgr(path: str | Path, size: int, intensity: Any = None) -> np.ndarray:
    """An image file as S×S BGR uint8: 8-bit files through cv2.imdecode(np.fromfile) with IMREAD_COLOR (the reference's
    decoder; non-ASCII paths ok, grey → 3 ch); deeper files (16-bit, float), DICOM and anything else cv2 cannot read
    as 8 bits through the project's one decoder (``data.imageio``, ``--intensity`` mapping); bilinear resize."""
    import cv2

    p = Path(path)
    if not p.is_file():
        raise XaiclipError(f"{p}: image not found")
    try:
        data = np.fromfile(str(p), dtype=np.uint8)
    except OSError as e:
        raise XaiclipError(f"{p}: cannot read ({e.strerror or e})") from None
    raw = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if raw is not None and raw.dtype == np.uint8 and (intensity in (None, "auto") or str(intensity) == "auto"):
        img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    else:  # 16-bit/float/DICOM/an explicit mapping: the shared decoder keeps the bit depth and maps it once
        from xaiclip_cli.data.imageio import load_image

        img = cv2.cvtColor(load_image(p, intensity), cv2.COLOR_RGB2BGR)
    if img is None:
        raise XaiclipError(f"{p}: not a readable image")
    if img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(img)


def _preprocess_fn(backend_or_preprocess: Any) -> Callable[[np.ndarray], torch.Tensor]:
    if hasattr(backend_or_preprocess, "preprocess"):
        return backend_or_preprocess.preprocess
    if callable(backend_or_preprocess):
        return backend_or_preprocess
    raise TypeError("prepare needs a backend with .preprocess or a preprocess callable")


def prepare(backend_or_preprocess: Any, image_bgr: np.ndarray, bgr_compat: bool = False,
            fill: str = "black") -> tuple[torch.Tensor, torch.Tensor]:
    """(x̃, fill) normalised [3,S,S] once: RGB by default, BGR fed as is with ``bgr_compat`` (reference scripts).

    fill: black = the all-zero image normalised (reference); mean = 0 in normalised space (the mean colour);
    blur = the image blurred by a Gaussian 11×11, σ 5, normalised.
    """
    img = np.asarray(image_bgr)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise UsageError(f"SMDL needs a uint8 HxWx3 BGR image, got dtype {img.dtype} shape {img.shape}")
    if fill not in FILLS:
        raise UsageError(f"unknown --fill {fill!r} (choose from {', '.join(FILLS)})")
    pre = _preprocess_fn(backend_or_preprocess)
    fed = img if bgr_compat else img[:, :, ::-1]
    x = pre(np.ascontiguousarray(fed))[0].float()
    if tuple(x.shape[1:]) != img.shape[:2]:
        raise UsageError(f"the model input is {x.shape[1]}x{x.shape[2]} but the image is {img.shape[0]}x"
                         f"{img.shape[1]}: resize images to the model size first (read_image_bgr)")
    if fill == "black":
        b = pre(np.zeros_like(img))[0].float()
    elif fill == "mean":
        b = torch.zeros_like(x)
    else:
        import cv2

        blurred = cv2.GaussianBlur(img, (11, 11), 5)
        b = pre(np.ascontiguousarray(blurred if bgr_compat else blurred[:, :, ::-1]))[0].float()
    return x, b


def attribute_image(scorer: Any, preprocess: Any, image_bgr: np.ndarray, target: int, division: dict[str, Any],
                    cfg: SmdlConfig, fill: str = "black", bgr_compat: bool = False
                    ) -> tuple[np.ndarray, SmdlResult]:
    """Divide (``division`` = {"mode": ..., divide() keywords}), attribute; ``result.order`` holds label ids."""
    div = dict(division)
    mode = div.pop("mode", "slico")
    labels = divide(image_bgr, mode, **div)
    ids, masks = elements(labels)
    x, b = prepare(preprocess, image_bgr, bgr_compat=bgr_compat, fill=fill)
    nonblack = np.asarray(image_bgr).astype(np.int32).sum(2) != 0
    res = attribute(scorer, x, b, torch.from_numpy(masks), target, cfg, nonblack)
    res.order = ids[res.order.astype(np.int64)].astype(np.int16)
    res.extra["region_ids"] = ids.astype(np.int32)
    return labels, res
