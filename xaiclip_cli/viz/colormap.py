"""Colormaps through matplotlib: a [0, 1] map → uint8 RGB."""

from __future__ import annotations

import numpy as np


def colormap_names() -> list[str]:
    """Names matplotlib knows (for option validation)."""
    import matplotlib

    return sorted(matplotlib.colormaps)


def apply_colormap(values: np.ndarray, name: str = "jet") -> np.ndarray:
    """Map values in [0, 1] (clipped) to uint8 RGB [H, W, 3] with matplotlib colormap ``name``."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"unknown colormap {name!r} (any matplotlib colormap, e.g. jet, viridis, inferno)") from None
    rgba = cmap(np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)
