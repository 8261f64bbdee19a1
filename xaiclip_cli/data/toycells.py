"""Synthetic "toy cells": procedural blood-smear-like RGB images of 5 white-cell classes with ground-truth masks.

Hand-written because no library draws labelled cells with known discriminative regions: every image holds one
white cell (the target) on a pink plasma background with red-cell discs; classes differ in nucleus shape, colours,
granules and size. ``{split}_masks`` marks the discriminative region, the target cell (all class evidence lies in
it; background is drawn alike for every class); ``{split}_nuclei`` marks its nucleus plus granules, a finer target.
Rendering is vectorised NumPy over whole splits (signed-distance shapes composited with soft alpha), deterministic
from a seed, and written as a MedMNIST-format npz (plus the two mask keys) so the MedMNIST reader is exercised.

Run ``python -m xaiclip_cli.data.toycells --out PATH`` to regenerate the shipped file.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from xaiclip_cli.data.base import SPLITS
from xaiclip_cli.data.npz import NpzSource, file_md5

TOYCELLS_CLASSES: list[str] = ["lymphocyte", "neutrophil", "eosinophil", "basophil", "monocyte"]

TOYCELLS_CAPTIONS: dict[str, list[str]] = {
    "lymphocyte": [
        "a microscopic image of a lymphocyte cell",
        "a blood cell with a large round dark nucleus and a thin rim of pale blue cytoplasm",
        "a small white blood cell with a round nucleus filling most of the cell",
        "a peripheral blood smear image of a lymphocyte",
    ],
    "neutrophil": [
        "a microscopic image of a neutrophil cell",
        "a blood cell with a segmented nucleus of three or four lobes and fine granules",
        "a white blood cell with a multi-lobed nucleus and pale pink cytoplasm",
        "a peripheral blood smear image of a neutrophil",
    ],
    "eosinophil": [
        "a microscopic image of an eosinophil cell",
        "a blood cell with a bilobed nucleus and coarse red-orange granules",
        "a white blood cell filled with bright orange eosinophilic granules",
        "a peripheral blood smear image of an eosinophil",
    ],
    "basophil": [
        "a microscopic image of a basophil cell",
        "a blood cell covered with coarse dark purple granules hiding the nucleus",
        "a white blood cell with dense dark basophilic granules",
        "a peripheral blood smear image of a basophil",
    ],
    "monocyte": [
        "a microscopic image of a monocyte cell",
        "a large blood cell with a kidney-shaped nucleus and grey-blue cytoplasm",
        "a big white blood cell with an indented reniform nucleus",
        "a peripheral blood smear image of a monocyte",
    ],
}

SHIPPED_FILE = "toycells_64.npz"
SHIPPED_KWARGS: dict[str, int] = {"n_train": 1000, "n_val": 200, "n_test": 300, "size": 64, "seed": 0}

# Per-class appearance (index = label). Colours are RGB 0..255 of a Wright-Giemsa-like stain.
_CELL_RADIUS = np.array([0.17, 0.25, 0.26, 0.23, 0.31])  # fraction of the image side
_CYTO_RGB = np.array([[165, 185, 228], [226, 200, 216], [240, 188, 160], [205, 178, 214], [178, 176, 210]], float)
_NUC_RGB = np.array([[62, 36, 112], [92, 48, 140], [100, 56, 150], [88, 48, 138], [128, 98, 170]], float)
_GRAN_RGB = np.array([[0, 0, 0], [196, 150, 196], [232, 112, 58], [64, 22, 96], [0, 0, 0]], float)
_GRAN_DENSITY = np.array([0.0, 0.55, 0.9, 0.8, 0.0])  # chance that a grid cell holds a granule
_GRAN_SPACING = np.array([0.05, 1.0 / 28, 1.0 / 18, 1.0 / 16, 0.05])  # granule grid step in image sides
_GRAN_OVER_NUCLEUS = np.array([False, False, False, True, False])
_BG_RGB = np.array([238.0, 214.0, 220.0])
_RBC_RGB = np.array([224.0, 142.0, 152.0])
# Texture amplitudes; per-pixel noise and background mottling are off because they triple the shipped npz size.
_SENSOR_NOISE, _MOTTLE, _CYTO_TEXTURE, _CHROMATIN = 0.0, 0.0, 0.03, 0.22
_CHUNK = 256  # images rendered per batch (bounds memory; each chunk has its own seed so output is chunk-stable)


def _value_noise(rng: np.random.Generator, n: int, size: int, spacing_px: np.ndarray | float) -> np.ndarray:
    """Smooth random field in [0, 1] of shape (n, size, size) with features about ``spacing_px`` pixels wide."""
    spacing = np.broadcast_to(np.asarray(spacing_px, float), (n,))
    cells = int(np.ceil(size / spacing.min())) + 2
    grid = rng.random((n, cells + 1, cells + 1))
    # Per-image scale and random offset so lattices do not line up across images.
    t = (np.arange(size) + 0.5)[None, :] / spacing[:, None] + rng.random((n, 1))
    s = (np.arange(size) + 0.5)[None, :] / spacing[:, None] + rng.random((n, 1))
    i0, j0 = np.floor(t).astype(int), np.floor(s).astype(int)
    ft, fs = t - i0, s - j0
    ft, fs = ft * ft * (3 - 2 * ft), fs * fs * (3 - 2 * fs)  # smoothstep: no lattice creases
    b = np.arange(n)[:, None, None]
    r0, r1, c0, c1 = i0[:, :, None], i0[:, :, None] + 1, j0[:, None, :], j0[:, None, :] + 1
    top = grid[b, r0, c0] * (1 - fs[:, None, :]) + grid[b, r0, c1] * fs[:, None, :]
    bot = grid[b, r1, c0] * (1 - fs[:, None, :]) + grid[b, r1, c1] * fs[:, None, :]
    return top * (1 - ft[:, :, None]) + bot * ft[:, :, None]


def _dot_field(rng: np.random.Generator, n: int, size: int, spacing: np.ndarray, density: np.ndarray) -> np.ndarray:
    """Distance (pixels) from each pixel to the nearest dot of a jittered grid (one dot per cell with ``density``)."""
    cells = int(np.ceil(size / spacing.min())) + 3
    jitter = rng.uniform(0.2, 0.8, (n, 2, cells, cells))
    alive = rng.random((n, cells, cells)) < density[:, None, None]
    pos = (np.arange(size) + 0.5)[None, :] / spacing[:, None]  # (n, S) pixel centre in grid units
    base = np.floor(pos).astype(int)
    b = np.arange(n)[:, None, None]
    best = np.full((n, size, size), np.inf)
    for di in (-1, 0, 1):
        ri = np.clip(base + di + 1, 0, cells - 1)[:, :, None]
        for dj in (-1, 0, 1):
            cj = np.clip(base + dj + 1, 0, cells - 1)[:, None, :]
            du = pos[:, :, None] - (ri - 1 + jitter[b, 0, ri, cj])
            dv = pos[:, None, :] - (cj - 1 + jitter[b, 1, ri, cj])
            d = np.hypot(du, dv) * _col(spacing)
            best = np.where(alive[b, ri, cj], np.minimum(best, d), best)
    return best


def _col(x: np.ndarray) -> np.ndarray:
    """Reshape a per-image vector (n,) to (n, 1, 1) for broadcasting against (n, S, S) fields."""
    return np.asarray(x, float)[:, None, None]


def _circle(u: np.ndarray, v: np.ndarray, cu: np.ndarray, cv: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance to a circle (negative inside); centres and radii are per image."""
    return np.hypot(u - _col(cu), v - _col(cv)) - _col(r)


def _capsule(u: np.ndarray, v: np.ndarray, a: np.ndarray, b: np.ndarray, r: float) -> np.ndarray:
    """Signed distance to a thick segment from a (n,2) to b (n,2): the thin strands joining nuclear lobes."""
    au, av, du, dv = _col(a[:, 0]), _col(a[:, 1]), _col(b[:, 0] - a[:, 0]), _col(b[:, 1] - a[:, 1])
    t = np.clip(((u - au) * du + (v - av) * dv) / (du * du + dv * dv + 1e-9), 0.0, 1.0)
    return np.hypot(u - au - t * du, v - av - t * dv) - r


def _nucleus_sdf(rng: np.random.Generator, label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (in cell radii) to the nucleus of one class, for images whose local coords are (u, v)."""
    n = u.shape[0]
    jit = lambda lo, hi: rng.uniform(lo, hi, n)  # noqa: E731
    if label == 0:  # lymphocyte: large round nucleus, slightly eccentric
        ang = jit(0, 2 * np.pi)
        off = jit(0.0, 0.14)
        a, b = jit(0.72, 0.82), jit(0.66, 0.78)
        uu, vv = u - _col(off * np.cos(ang)), v - _col(off * np.sin(ang))
        return (np.sqrt((uu / _col(a)) ** 2 + (vv / _col(b)) ** 2) - 1.0) * _col(np.minimum(a, b))
    if label == 1:  # neutrophil: 3-4 small lobes along a C-shaped arc joined by thin strands
        lobes = rng.integers(3, 5, n)
        spread = jit(2.2, 3.2)
        arc_r = jit(0.42, 0.52)
        d = np.full(u.shape, np.inf)
        prev = None
        for k in range(4):
            frac = np.where(lobes > 1, k / np.maximum(lobes - 1, 1), 0.0)
            ang = -spread / 2 + spread * frac + rng.normal(0, 0.12, n)
            centre = np.stack([arc_r * np.cos(ang) - 0.2, arc_r * np.sin(ang)], axis=1)
            active = _col(k < lobes)
            dk = _circle(u, v, centre[:, 0], centre[:, 1], jit(0.19, 0.25))
            if prev is not None:
                dk = np.minimum(dk, _capsule(u, v, prev, centre, 0.05))
            d = np.where(active, np.minimum(d, dk), d)
            prev = centre
        return d
    if label == 2:  # eosinophil: two round lobes ("spectacles") joined by a strand
        sep, r = jit(0.32, 0.42), jit(0.27, 0.33)
        dy = jit(-0.15, 0.05)
        a = np.stack([-sep, dy], axis=1)
        b = np.stack([sep, dy + rng.normal(0, 0.06, n)], axis=1)
        d = np.minimum(_circle(u, v, a[:, 0], a[:, 1], r), _circle(u, v, b[:, 0], b[:, 1], r * jit(0.85, 1.05)))
        return np.minimum(d, _capsule(u, v, a, b, 0.07))
    if label == 3:  # basophil: compact, weakly bilobed nucleus (mostly hidden by granules)
        sep, r = jit(0.12, 0.22), jit(0.36, 0.44)
        return np.minimum(_circle(u, v, -sep, 0.0 * sep, r), _circle(u, v, sep, jit(-0.1, 0.1), r * jit(0.8, 1.0)))
    # monocyte: kidney-shaped nucleus = an ellipse with a circular bite taken from one side
    a, b = jit(0.62, 0.72), jit(0.46, 0.54)
    cu = jit(-0.12, 0.0)
    ell = (np.sqrt(((u - _col(cu)) / _col(a)) ** 2 + (v / _col(b)) ** 2) - 1.0) * _col(np.minimum(a, b))
    bite = -_circle(u, v, cu + a * jit(0.8, 1.0), jit(-0.06, 0.06), jit(0.3, 0.38))
    return np.maximum(ell, bite)


def _alpha(d: np.ndarray, scale_px: np.ndarray, soft_px: float = 0.9) -> np.ndarray:
    """Anti-aliased coverage of a shape from its signed distance ``d`` (in units of ``scale_px`` pixels)."""
    return np.clip(0.5 - d * _col(scale_px) / soft_px, 0.0, 1.0)


def _mix(img: np.ndarray, rgb: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Composite colour ``rgb`` ((n,3) or (n,S,S,3)) over ``img`` with coverage ``a`` (n,S,S)."""
    if rgb.ndim == 2:
        rgb = rgb[:, None, None, :]
    return img + (rgb - img) * a[..., None]


def _render(rng: np.random.Generator, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one image per label: images (n,S,S,3) uint8, cell masks and nucleus+granule masks (n,S,S) uint8."""
    n = len(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(float) + 0.5
    # Plasma background: per-image stain tint and a faint smooth mottling.
    bg = _BG_RGB + rng.normal(0, 5, (n, 3))
    img = bg[:, None, None, :] * (1 + _MOTTLE * (_value_noise(rng, n, size, size / 3) - 0.5))[..., None]

    # Red cells: up to 8 biconcave discs with a pale centre, drawn behind the white cell.
    for _ in range(8):
        active = rng.random(n) < 0.7
        cx, cy = rng.uniform(-0.1, 1.1, (2, n)) * size
        r = rng.uniform(0.11, 0.15, n) * size
        d = np.hypot(xx - _col(cx), yy - _col(cy)) / _col(r)
        rgb = (_RBC_RGB + rng.normal(0, 6, (n, 3)))[:, None, None, :]
        pallor = 0.4 * _alpha(d - 0.45, r * 0.5)[..., None]  # pale centre with a soft rim
        rgb = rgb + (bg[:, None, None, :] - rgb) * pallor
        img = _mix(img, rgb, _alpha(d - 1.0, r) * _col(active))

    # The target white cell: class radius with scale jitter, random position and rotation.
    radius = _CELL_RADIUS[labels] * size * rng.uniform(0.88, 1.12, n)
    cx, cy = size / 2 + rng.uniform(-0.12, 0.12, (2, n)) * size
    theta = rng.uniform(0, 2 * np.pi, n)
    dx, dy = xx - _col(cx), yy - _col(cy)
    cos, sin = _col(np.cos(theta)), _col(np.sin(theta))
    u, v = (dx * cos + dy * sin) / _col(radius), (-dx * sin + dy * cos) / _col(radius)
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    wobble = 1 + _col(rng.uniform(0.0, 0.07, n)) * np.cos(2 * phi + _col(rng.uniform(0, 6.3, n)))
    wobble = wobble + _col(rng.uniform(0.0, 0.04, n)) * np.cos(3 * phi + _col(rng.uniform(0, 6.3, n)))
    d_cell = rho - wobble
    a_cell = _alpha(d_cell, radius)
    stain = rng.normal(0, 7, (n, 3))
    cyto = _CYTO_RGB[labels] + stain
    texture = 1 + _CYTO_TEXTURE * (_value_noise(rng, n, size, size / 10) - 0.5)
    img = _mix(img, cyto[:, None, None, :] * texture[..., None], a_cell)

    # Nucleus: a class-specific shape in cell coordinates.
    d_nuc = np.empty_like(u)
    for c in range(len(TOYCELLS_CLASSES)):
        sel = np.flatnonzero(labels == c)
        if sel.size:
            d_nuc[sel] = _nucleus_sdf(rng, c, u[sel], v[sel])
    a_nuc = _alpha(d_nuc, radius) * (d_cell < -0.02)

    # Granules: round dots on a jittered grid inside the cytoplasm; density and grain size depend on the class.
    spacing = _GRAN_SPACING[labels] * size * rng.uniform(0.92, 1.08, n)
    d_dot = _dot_field(rng, n, size, spacing, _GRAN_DENSITY[labels] * rng.uniform(0.85, 1.1, n))
    inside = np.clip((-d_cell - 0.06) * _col(radius), 0.0, 1.0)
    a_gran = np.clip(0.5 - (d_dot - _col(0.36 * spacing)) / 0.7, 0.0, 1.0) * inside
    gran_rgb = _GRAN_RGB[labels] + stain
    over = _col(_GRAN_OVER_NUCLEUS[labels])

    img = _mix(img, gran_rgb, a_gran * (1 - over))
    chroma = 1 + _CHROMATIN * (_value_noise(rng, n, size, size / 14) - 0.5)  # chromatin clumping
    nuc_rgb = (_NUC_RGB[labels] + stain)[:, None, None, :] * chroma[..., None]
    img = _mix(img, nuc_rgb, a_nuc)
    img = _mix(img, gran_rgb, a_gran * over)

    # Global stain/exposure variation and a little sensor noise (kept small: the shipped npz must stay small).
    img = img * rng.uniform(0.93, 1.05, (n, 1, 1, 3)) + rng.normal(0, _SENSOR_NOISE, img.shape)
    images = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    # The discriminative region is the target white cell: everything class-specific (nucleus, cytoplasm colour,
    # granules, size) lives inside it, while plasma and red cells are drawn the same way for every class.
    cells = (a_cell > 0.5).astype(np.uint8)
    nuclei = ((a_nuc > 0.5) | (a_gran > 0.5)).astype(np.uint8)
    return images, cells, nuclei


def _balanced_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """n labels with class counts differing by at most one, in random order."""
    return rng.permutation(np.arange(n) % len(TOYCELLS_CLASSES)).astype(np.int64)


def generate_toycells(
    n_train: int = 1000, n_val: int = 200, n_test: int = 300, size: int = 64, seed: int = 0
) -> dict[str, np.ndarray]:
    """Generate the toy-cells splits as MedMNIST-style arrays plus ``{split}_masks`` (deterministic from ``seed``)."""
    if size < 16:
        raise ValueError(f"toy cells need size >= 16, got {size}")
    out: dict[str, np.ndarray] = {}
    for k, (split, n) in enumerate(zip(SPLITS, (n_train, n_val, n_test), strict=True)):
        # Independent streams per split and per chunk: changing n_val does not change the train images.
        labels = _balanced_labels(np.random.default_rng(np.random.SeedSequence([int(seed), k])), int(n))
        images = np.zeros((n, size, size, 3), np.uint8)
        masks = np.zeros((n, size, size), np.uint8)
        nuclei = np.zeros((n, size, size), np.uint8)
        for c, lo in enumerate(range(0, n, _CHUNK)):
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), k, c + 1]))
            sl = slice(lo, lo + _CHUNK)
            images[sl], masks[sl], nuclei[sl] = _render(rng, labels[sl], size)
        out[f"{split}_images"] = images
        out[f"{split}_labels"] = labels[:, None]
        out[f"{split}_masks"] = masks
        out[f"{split}_nuclei"] = nuclei
    return out


def write_toycells_npz(path: str | Path, **kw: int) -> Path:
    """Generate toy cells (keyword arguments of ``generate_toycells``) and write them atomically as a compressed npz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = generate_toycells(**kw)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the file is ordinary shared data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def toycells_path() -> Path:
    """Path of the shipped toy-cells npz; regenerated deterministically if it is missing.

    When the package folder is read-only (a system install), the regenerated file goes to
    ``$XDG_CACHE_HOME/xaiclip`` (default ``~/.cache/xaiclip``) instead.
    """
    from xaiclip_cli.resources import resource_dir

    path = resource_dir("toycells") / SHIPPED_FILE
    if path.exists():
        return path
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xaiclip" / SHIPPED_FILE
    if cache.exists():
        return cache
    try:
        return write_toycells_npz(path, **SHIPPED_KWARGS)
    except OSError:
        return write_toycells_npz(cache, **SHIPPED_KWARGS)


class ToyCellsSource(NpzSource):
    """The shipped (or a given) toy-cells npz, read by the same reader as MedMNIST files, with masks."""

    def __init__(self, path: str | Path | None = None) -> None:
        p = Path(path) if path is not None else toycells_path()
        super().__init__(
            p, kind="toycells", ref="toycells", class_names=list(TOYCELLS_CLASSES), require_masks=True
        )
        self.md5 = file_md5(self.path)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: write a toy-cells npz (defaults reproduce the shipped file)."""
    ap = argparse.ArgumentParser(description="Write the synthetic toy-cells dataset as a MedMNIST-format npz.")
    ap.add_argument("--out", type=Path, required=True, help="output .npz path")
    for key, val in SHIPPED_KWARGS.items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=int, default=val)
    ap.add_argument("--preview", type=Path, default=None, help="also write a PNG grid of the first test images")
    args = ap.parse_args(argv)
    kw = {k: getattr(args, k) for k in SHIPPED_KWARGS}
    path = write_toycells_npz(args.out, **kw)
    if args.preview is not None:
        write_preview(path, args.preview)
    print(path)
    return 0


def write_preview(npz: str | Path, png: str | Path, split: str = "test", n: int = 40) -> Path:
    """Save a grid of images (top rows) and their masks (bottom rows) as PNG, for eyeballing the generator."""
    from PIL import Image

    with np.load(npz) as z:
        imgs, labels, masks = z[f"{split}_images"][:n], z[f"{split}_labels"][:n, 0], z[f"{split}_masks"][:n]
    order = np.argsort(labels, kind="stable")
    imgs, masks = imgs[order], masks[order]
    cols = 10
    rows = int(np.ceil(len(imgs) / cols))
    s = imgs.shape[1]
    grid = np.full((rows * 2 * (s + 2), cols * (s + 2), 3), 255, np.uint8)
    for i, (im, m) in enumerate(zip(imgs, masks, strict=True)):
        r, c = divmod(i, cols)
        grid[r * (s + 2):r * (s + 2) + s, c * (s + 2):c * (s + 2) + s] = im
        over = im.copy()
        over[m > 0] = (0.5 * over[m > 0] + [0, 127, 0]).astype(np.uint8)
        rr = (rows + r) * (s + 2)
        grid[rr:rr + s, c * (s + 2):c * (s + 2) + s] = over
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(png)
    return Path(png)


if __name__ == "__main__":
    raise SystemExit(main())
