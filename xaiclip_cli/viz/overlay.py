"""Heatmap overlays on the original image, at the original resolution (PIL for resizing, no OpenCV)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from xaiclip_cli.viz.colormap import apply_colormap


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 HxW, HxWx1, HxWx3 or HxWx4 → uint8 HxWx3."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return img[:, :, :3]


def resize_map(values: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (H, W) with PIL (float mode keeps the values)."""
    if tuple(values.shape) == tuple(size_hw):
        return values.astype(np.float32)
    im = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(im.resize((size_hw[1], size_hw[0]), Image.BILINEAR), dtype=np.float32)


def overlay(image: np.ndarray, values: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend ``(1-alpha)·image + alpha·colormap(values)``; ``values`` in [0, 1] is resized to the image."""
    rgb = as_rgb(image)
    heat = apply_colormap(resize_map(values, rgb.shape[:2]), colormap)
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def save_png(array: np.ndarray, path: str) -> None:
    """Write a uint8 RGB array as PNG (to a temporary name first, then renamed)."""
    import os

    tmp = f"{path}.tmp.png"
    Image.fromarray(as_rgb(array)).save(tmp, format="PNG")
    os.replace(tmp, path)
