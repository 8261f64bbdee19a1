"""The CAM figure: original, heatmap with colour bar, overlay, and probability bars with the target highlighted."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from xaiclip_cli.viz.overlay import as_rgb, overlay, resize_map


def cam_figure(
    image: np.ndarray,
    values: np.ndarray,
    probs: Sequence[float],
    names: Sequence[str],
    target: int,
    path: str,
    *,
    title: str = "",
    alpha: float = 0.5,
    colormap: str = "jet",
    dpi: int = 100,
) -> None:
    """Draw the four-panel figure and write it to ``path`` as PNG (temporary name, then rename)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rgb = as_rgb(image)
    shown = resize_map(values, rgb.shape[:2])
    fig = Figure(figsize=(16, 4.2), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1.2, 1, 1.3]})
    axes[0].imshow(rgb)
    axes[0].set_title("original")
    im = axes[1].imshow(shown, cmap=colormap, vmin=float(np.min(shown)), vmax=float(np.max(shown)) or 1.0)
    axes[1].set_title("heatmap")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    axes[2].imshow(overlay(rgb, shown, alpha=alpha, colormap=colormap))
    axes[2].set_title("overlay")
    for ax in axes[:3]:
        ax.axis("off")
    y = np.arange(len(names))
    colours = ["tab:red" if i == target else "tab:gray" for i in range(len(names))]
    axes[3].barh(y, list(probs), color=colours)
    axes[3].set_yticks(y, [short_label(str(n)) for n in names], fontsize=8)
    axes[3].invert_yaxis()
    axes[3].set_xlim(0, 1)
    axes[3].set_xlabel("probability (softmax of logits)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


def short_label(text: str, width: int = 32) -> str:
    """Shorten a prompt for a bar label, keeping its end (prompts share a template prefix; the class is last)."""
    return text if len(text) <= width else "…" + text[-(width - 1):]
