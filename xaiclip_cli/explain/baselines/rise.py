"""RISE (Petsiuk et al. 2018): saliency = Σ_i p_t(x ⊙ M_i + fill ⊙ (1 − M_i)) · M_i / (N·p).

Masks follow the authors' ``generate_masks``: a Bernoulli(p) s×s grid, bilinearly upsampled to (s+1)·⌈S/s⌉ and
cropped at a random shift in [0, ⌈S/s⌉). Their upsampling is ``skimage.transform.resize(order=1, mode="reflect")``;
it is separable, so it is written here as two small interpolation matrices (``mask = R_y G R_xᵀ``), which equals
the skimage call (tested) and builds a batch of masks with one batched matmul on the device instead of N resizes.
Random numbers come from one NumPy PCG64 generator drawn in a fixed order, so a seed gives the same masks
whatever the batch size or device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from xaiclip_cli.explain.baselines.scoring import ProbFn


def interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] linear interpolation, half-pixel centres, whole-sample mirror borders (ndimage ``mirror``)."""
    c = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(c).astype(np.int64)
    f = c - i0
    R = np.zeros((n_out, n_in), dtype=np.float64)

    def mirror(i: np.ndarray) -> np.ndarray:
        if n_in == 1:
            return np.zeros_like(i)
        period = 2 * (n_in - 1)
        i = np.abs(i) % period
        return np.where(i > n_in - 1, period - i, i)

    rows = np.arange(n_out)
    np.add.at(R, (rows, mirror(i0)), 1 - f)
    np.add.at(R, (rows, mirror(i0 + 1)), f)
    return R


class RiseMasks:
    """The N seeded RISE masks of one input size, built batch by batch on demand (never all N at once)."""

    def __init__(self, n: int, size: tuple[int, int], grid: int = 7, p: float = 0.5, seed: int = 0) -> None:
        H, W = size
        self.n, self.size, self.grid, self.p = int(n), (int(H), int(W)), int(grid), float(p)
        self.cell = (math.ceil(H / grid), math.ceil(W / grid))
        rng = np.random.default_rng(seed)
        self.cells = rng.random((self.n, grid, grid)) < p  # as the authors: rand < p, then shifts
        self.shifts = np.stack([rng.integers(0, self.cell[0], self.n), rng.integers(0, self.cell[1], self.n)], 1)
        self.Ry = interp_matrix(grid, (grid + 1) * self.cell[0])
        self.Rx = interp_matrix(grid, (grid + 1) * self.cell[1])

    def batch(self, start: int, stop: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Masks [stop−start, H, W] float32 in [0, 1]."""
        H, W = self.size
        sy, sx = self.shifts[start:stop, 0], self.shifts[start:stop, 1]
        ry = np.stack([self.Ry[a:a + H] for a in sy])  # [n, H, s]
        rx = np.stack([self.Rx[b:b + W] for b in sx])  # [n, W, s]
        g = torch.from_numpy(self.cells[start:stop].astype(np.float32)).to(device)
        ry_t = torch.from_numpy(ry.astype(np.float32)).to(device)
        rx_t = torch.from_numpy(rx.astype(np.float32)).to(device)
        return ry_t @ g @ rx_t.transpose(1, 2)


def rise_maps(probs: ProbFn, x: torch.Tensor, targets: list[int], fill: torch.Tensor, *, n: int = 4000,
              grid: int = 7, p: float = 0.5, batch: int = 64, seed: int = 0) -> torch.Tensor:
    """RISE maps [B,H,W] for ``x`` [B,3,H,W] normalised; every image sees the same seeded masks."""
    H, W = int(x.shape[-2]), int(x.shape[-1])
    masks = RiseMasks(n, (H, W), grid, p, seed)
    # float64 sums on the CPU (MPS has no float64); one [H,W] partial sum per batch crosses over
    out = torch.zeros(x.shape[0], H, W, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, masks.n, batch):
            m = masks.batch(start, min(masks.n, start + batch), x.device)  # [n,H,W]
            for b in range(x.shape[0]):
                inp = torch.lerp(fill[None], x[b][None], m[:, None])  # fill + M·(x − fill) = x⊙M + fill⊙(1−M)
                score = probs(inp)[:, targets[b]].float()
                out[b] += torch.einsum("n,nhw->hw", score, m).cpu().double()
    return (out / (masks.n * masks.p)).float()
