"""Small pictures for the HTML report: data-URI thumbnails, mask contours, attrib region orders, SVG sparklines.

Thumbnails go through PIL (resize, JPEG/PNG encode) and contours/region borders through scikit-image
(``find_boundaries``). The per-image curves are drawn as a few lines of inline SVG instead of matplotlib: a gallery of
200 images would spend seconds in matplotlib and bytes in PNGs, while an SVG polyline is a few hundred bytes.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from xaiclip_cli.viz.colormap import apply_colormap
from xaiclip_cli.viz.overlay import as_rgb

# Contour and sparkline colours (colour-blind safe pair from the Okabe-Ito palette).
CONTOUR_RGB = (0, 255, 255)
CURVE_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")


def thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an image so its longest side is ``size`` px (bilinear; aspect kept)."""
    rgb = as_rgb(image)
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if new == (w, h):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(new, Image.BILINEAR))


def data_uri(image: np.ndarray, fmt: str = "jpeg", quality: int = 80) -> str:
    """Encode a uint8 RGB array as a ``data:`` URI (JPEG for photographs, PNG for flat colours)."""
    buf = io.BytesIO()
    pil = Image.fromarray(as_rgb(image))
    if fmt == "png":
        pil.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    else:
        pil.save(buf, format="JPEG", quality=quality)
        mime = "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_bytes_uri(data: bytes) -> str:
    """A ``data:`` URI for PNG bytes (matplotlib figures)."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def resize_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a mask (any dtype, non-zero = inside) to (H, W) booleans."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m.max(axis=2)
    m = (m != 0).astype(np.uint8) * 255
    if m.shape != tuple(size_hw):
        m = np.asarray(Image.fromarray(m).resize((size_hw[1], size_hw[0]), Image.NEAREST))
    return m > 0


def draw_contour(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = CONTOUR_RGB) -> np.ndarray:
    """The image with the outline of ``mask`` (resized to the image) drawn in ``colour``."""
    from skimage.segmentation import find_boundaries

    rgb = as_rgb(image).copy()
    inside = resize_mask(mask, rgb.shape[:2])
    if not inside.any():
        return rgb
    edge = find_boundaries(inside, mode="inner")
    rgb[edge] = colour
    return rgb


def region_order_image(
    labels: np.ndarray, order: Sequence[int], image: np.ndarray | None = None, colormap: str = "viridis_r",
    alpha: float = 0.65,
) -> np.ndarray:
    """Colour each attrib region by its selection rank (first chosen = brightest end of ``colormap``).

    Regions never selected stay grey; region borders are drawn. Over ``image`` when given (labels resized to it).
    """
    from skimage.segmentation import find_boundaries

    lab = np.asarray(labels).astype(np.int64)
    order = [int(o) for o in order]
    k = max(len(order), 1)
    rank = np.full(int(lab.max()) + 1 if lab.size else 1, np.nan, dtype=np.float32)
    for pos, region in enumerate(order):
        if 0 <= region < rank.size and np.isnan(rank[region]):
            rank[region] = pos / max(k - 1, 1)
    values = rank[np.clip(lab, 0, rank.size - 1)]
    unselected = np.isnan(values)
    heat = apply_colormap(np.nan_to_num(values, nan=0.0), colormap).astype(np.float32)
    heat[unselected] = 128.0
    if image is not None:
        base = as_rgb(image)
        if base.shape[:2] != lab.shape:
            heat = np.asarray(Image.fromarray(heat.astype(np.uint8)).resize(
                (base.shape[1], base.shape[0]), Image.NEAREST), dtype=np.float32)
            lab = np.asarray(Image.fromarray(lab.astype(np.int32)).resize(
                (base.shape[1], base.shape[0]), Image.NEAREST))
        heat = (1 - alpha) * base.astype(np.float32) + alpha * heat
    out = np.clip(heat + 0.5, 0, 255).astype(np.uint8)
    out[find_boundaries(lab, mode="inner")] = (255, 255, 255)
    return out


def sparkline_svg(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]], width: int = 120, height: int = 64,
) -> str:
    """Inline SVG of a few (name, x, y) curves sharing axes, with a legend in the ``<title>`` and small labels."""
    usable = [(n, np.asarray(x, float), np.asarray(y, float)) for n, x, y in curves if len(y) >= 2]
    if not usable:
        return ""
    xs = np.concatenate([x[np.isfinite(x)] for _, x, _ in usable] or [np.zeros(1)])
    ys = np.concatenate([y[np.isfinite(y)] for _, _, y in usable] or [np.zeros(1)])
    x0, x1 = (float(xs.min()), float(xs.max())) if xs.size else (0.0, 1.0)
    y0, y1 = (float(ys.min()), float(ys.max())) if ys.size else (0.0, 1.0)
    y0, y1 = min(y0, 0.0), max(y1, 1.0 if y1 <= 1.0 else y1)
    if x1 <= x0:
        x1 = x0 + 1.0
    pad = 4
    lines = []
    legend = []
    for i, (name, x, y) in enumerate(usable):
        ok = np.isfinite(x) & np.isfinite(y)
        px = pad + (x[ok] - x0) / (x1 - x0) * (width - 2 * pad)
        py = height - pad - (y[ok] - y0) / (y1 - y0) * (height - 2 * pad - 10)
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py, strict=True))
        colour = CURVE_COLOURS[i % len(CURVE_COLOURS)]
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/>')
        legend.append(f'<tspan fill="{colour}">{html.escape(name[:14])} </tspan>')
    title = html.escape("; ".join(n for n, _, _ in usable) + f" (y {y0:.3g}..{y1:.3g})")
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img"><title>{title}</title>'
        f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="#fff" stroke="#ccc"/>'
        + "".join(lines)
        + f'<text x="{pad}" y="9" font-size="8">{"".join(legend)}</text></svg>'
    )
