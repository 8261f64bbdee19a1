"""Sub-region division for SMDL attribution (smdl.md §3): SLICO, SEEDS, grid, prior-patch and SAM masks → label maps.

Superpixels come from OpenCV contrib (``cv2.ximgproc``); grid, prior-patch and SAM post-processing are a few lines of
NumPy each (no library implements the reference's exact conventions: grid cells covering every pixel, stable descending
cell groups with leftovers kept, SAM overlap removal in pair order).
"""

from __future__ import annotations

import numpy as np

from xaiclip_cli.errors import UsageError

MODES = ("slico", "seeds", "grid", "prior-patch", "sam")
SAM_MIN_FRACTION = 0.0005  # masks covering at most this pixel fraction are dropped (reference processing_sam_concepts)


def auto_region_size(size: int) -> int:
    """SLICO region size for an S-px input: round(30·S/224) (30 at 224 for parity, 9 at 64), at least 1."""
    return max(1, int(round(30 * int(size) / 224)))


def _check_image(image_bgr: np.ndarray) -> np.ndarray:
    img = np.asarray(image_bgr)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise UsageError(f"division needs a uint8 HxWx3 BGR image, got dtype {img.dtype} shape {img.shape}")
    if img.shape[0] != img.shape[1]:
        raise UsageError(f"division needs a square image at model size, got {img.shape[0]}x{img.shape[1]}")
    return np.ascontiguousarray(img)


def _slico(img: np.ndarray, region_size: int | None) -> np.ndarray:
    import cv2

    rs = auto_region_size(img.shape[0]) if region_size is None else int(region_size)
    if rs < 1:
        raise UsageError(f"--region-size must be >= 1, got {region_size}")
    if rs > img.shape[0] // 2:
        # OpenCV crashes (segfault) from about twice the image side, and anything over half the side leaves < 4.
        raise UsageError(f"--region-size {rs} is too large for a {img.shape[0]}px image: SMDL needs at least 2 "
                         f"regions (use at most {img.shape[0] // 2})")
    sp = cv2.ximgproc.createSuperpixelSLIC(img, algorithm=cv2.ximgproc.SLICO, region_size=rs, ruler=20.0)
    sp.iterate(20)  # no enforceLabelConnectivity: ids as returned (reference)
    return sp.getLabels().astype(np.int32)


def _seeds(img: np.ndarray, n: int) -> np.ndarray:
    import cv2

    if n < 2:
        raise UsageError(f"--seeds-superpixels must be >= 2, got {n}")
    h, w = img.shape[:2]
    sp = cv2.ximgproc.createSuperpixelSEEDS(w, h, 3, num_superpixels=int(n), num_levels=3)
    sp.iterate(img, 10)
    return sp.getLabels().astype(np.int32)


def _grid_index(size: int, n: int) -> np.ndarray:
    """Row-major N×N cell index of every pixel, nearest upsampling (cell of pixel y is ⌊y·N/S⌋): covers all pixels."""
    idx = (np.arange(size) * n) // size
    return (idx[:, None] * n + idx[None, :]).astype(np.int32)


def _grid(size: int, n: int) -> np.ndarray:
    if n < 1 or n > size:
        raise UsageError(f"--grid must be between 1 and the image size {size}, got {n}")
    return _grid_index(size, n)


def _prior_patch(size: int, prior: np.ndarray | None, g: int, d: int) -> np.ndarray:
    import cv2

    if prior is None:
        raise UsageError("division prior-patch needs a prior map (--prior DIR)")
    p = np.asarray(prior, dtype=np.float32)
    if p.ndim == 3 and p.shape[-1] == 1:
        p = p[..., 0]
    if p.ndim != 2 or min(p.shape) < 1:
        raise UsageError(f"prior map must be a 2-D array, got shape {np.asarray(prior).shape}")
    if not np.isfinite(p).all():
        raise UsageError("prior map contains NaN or infinite values")
    if g < 1 or g > size:
        raise UsageError(f"--prior-grid must be between 1 and the image size {size}, got {g}")
    if d < 1:
        raise UsageError(f"--cells-per-region must be >= 1, got {d}")
    cells = cv2.resize(p, (g, g), interpolation=cv2.INTER_LINEAR).reshape(-1)
    order = np.argsort(-cells, kind="stable")  # descending saliency, ties keep row-major order
    n_groups = (g * g) // d
    if n_groups < 1:
        raise UsageError(f"--cells-per-region {d} exceeds the {g}x{g} prior grid's {g * g} cells")
    group_of_cell = np.empty(g * g, np.int32)
    # Leftover cells (when d does not divide G²) join the last group; the reference drops them.
    group_of_cell[order] = np.minimum(np.arange(g * g) // d, n_groups - 1)
    return group_of_cell[_grid_index(size, g)]


def sam_elements(masks: np.ndarray) -> list[np.ndarray]:
    """SAM masks → disjoint elements: pairwise overlap removal in order, tiny masks dropped, remainder appended."""
    m = np.asarray(masks).astype(bool).copy()
    n, h, w = m.shape
    area = m.reshape(n, -1).sum(1).astype(np.int64)
    for i in range(n):
        for j in range(i + 1, n):
            inter = m[i] & m[j]
            k = int(inter.sum())
            if k == 0:
                continue
            # The overlap is removed from the mask where it is the smaller fraction (the larger mask); tie → mask i.
            fi, fj = k / max(area[i], 1), k / max(area[j], 1)
            t = i if fi <= fj else j
            m[t] &= ~inter
            area[t] -= k
    keep = [m[i] for i in range(n) if area[i] / float(h * w) > SAM_MIN_FRACTION]
    covered = np.zeros((h, w), bool)
    for e in keep:
        covered |= e
    keep.append(~covered)  # remainder: uncovered pixels (may be empty)
    return keep


def _sam(size: int, sam_masks: np.ndarray | None) -> np.ndarray:
    if sam_masks is None:
        raise UsageError("division sam needs masks (--sam-masks DIR with <key>.npz holding masks[M,H,W])")
    m = np.asarray(sam_masks)
    if m.ndim != 3 or m.shape[0] < 1:
        raise UsageError(f"SAM masks must be an array [M,H,W] with M >= 1, got shape {m.shape}")
    if m.shape[1:] != (size, size):
        raise UsageError(f"SAM masks are {m.shape[1]}x{m.shape[2]} but the image is {size}x{size}")
    labels = np.full((size, size), -1, np.int32)
    for i, e in enumerate(sam_elements(m)):
        labels[e] = i
    return labels


def divide(
    image_bgr: np.ndarray,
    mode: str,
    *,
    region_size: int | None = None,
    grid: int = 10,
    prior: np.ndarray | None = None,
    prior_grid: int = 10,
    cells_per_region: int = 4,
    sam_masks: np.ndarray | None = None,
    seeds_superpixels: int = 50,
) -> np.ndarray:
    """Divide an S×S BGR uint8 image into regions: int32 label map [S,S] (ids as the method returns them)."""
    img = _check_image(image_bgr)
    size = img.shape[0]
    if mode == "slico":
        labels = _slico(img, region_size)
    elif mode == "seeds":
        labels = _seeds(img, seeds_superpixels)
    elif mode == "grid":
        labels = _grid(size, int(grid))
    elif mode == "prior-patch":
        labels = _prior_patch(size, prior, int(prior_grid), int(cells_per_region))
    elif mode == "sam":
        labels = _sam(size, sam_masks)
    else:
        raise UsageError(f"unknown division {mode!r} (choose from {', '.join(MODES)})")
    n = len(np.unique(labels))
    if n < 2:
        raise UsageError(f"division {mode} yields {n} region on this {size}x{size} image; SMDL needs at least 2 "
                         "(use a smaller --region-size or a finer grid)")
    return labels


def elements(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids int[n] ascending, bool masks [n,S,S]): one element per label id present in the map."""
    lab = np.asarray(labels)
    ids = np.unique(lab)
    return ids.astype(np.int64), lab[None, :, :] == ids[:, None, None]
