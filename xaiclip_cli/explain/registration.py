"""Where a CNN map's cells sit on the image: effective-receptive-field centres, and upsampling that honours them.

Half-pixel upsampling (``F.interpolate(..., align_corners=False)``, cv2.resize, what pytorch-grad-cam does) assumes
cell o of a stride-s map is centred on input pixel s·o + (s−1)/2. That holds for patchify towers (ViT patches,
ConvNeXt's k4/s4 stem and k2/s2 downsamples) but not for CNNs built from 'same'-padded stride-2 convolutions
(ResNet, EfficientNet): there cell o is centred near pixel s·o, so their maps land (s−1)/2 px up and left of the
evidence (15.5 px for a ResNet-50 at 224 px). Trained weights shift the effective centre further.

``receptive_field_centres`` measures it instead of assuming it: the centroid of |∂A[:, :, i, j]/∂x| for the central
cell (summed over channels, averaged over a few seeded random inputs) gives the centre of cell (0, 0) and the stride
per axis. ``upsample_registered`` then samples the map at u = (y − c)/s. Hand-written because no library measures
this: pytorch-grad-cam and torchcam resize half-pixel for every tower.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from xaiclip_cli.explain.cam.hooks import capture
from xaiclip_cli.explain.layers import LayerInfo, find_module, to_nchw


@dataclass(frozen=True)
class CellGeometry:
    """Input-pixel centre of map cell (0, 0) and the stride between cells, per axis (pixel centres at integers)."""

    centre_y: float
    centre_x: float
    stride_y: float
    stride_x: float

    @classmethod
    def half_pixel(cls, size: tuple[int, int], grid: tuple[int, int]) -> CellGeometry:
        """The geometry half-pixel upsampling assumes: cell o centred on s·o + (s−1)/2."""
        sy, sx = size[0] / grid[0], size[1] / grid[1]
        return cls((sy - 1) / 2, (sx - 1) / 2, sy, sx)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly record (rounded to 1e-3 px)."""
        return {k: round(float(v), 3) for k, v in asdict(self).items()}


def receptive_field_centres(backend: Any, layer: LayerInfo, size: tuple[int, int], seeds: int = 4) -> CellGeometry:
    """Measured geometry of an NCHW/NHWC layer's cells: effective-receptive-field centroid of the central cell."""
    module = find_module(backend.vision_module(), layer.name)
    device = getattr(backend, "device", torch.device("cpu"))
    dtype = getattr(backend, "dtype", torch.float32)
    h, w = int(layer.grid[0]), int(layer.grid[1])
    i, j = h // 2, w // 2
    acc = torch.zeros(size, dtype=torch.float64)
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, 3, *size, generator=g).to(device, dtype).requires_grad_(True)
        with capture(module) as box, torch.enable_grad():
            backend.encode_image(x)
            act = box.activation
            if act is None or not act.requires_grad:
                raise ValueError(f"layer {layer.name!r} did not run or carries no gradient")
            cell = to_nchw(act, layer.layout, layer.prefix, layer.grid)[0, :, i, j].sum()
            (grad,) = torch.autograd.grad(cell, x)
        acc += grad.detach().abs().sum(dim=(0, 1)).double().cpu()
    total = float(acc.sum())
    if not total > 0:
        return CellGeometry.half_pixel(size, (h, w))
    ys = torch.arange(size[0], dtype=torch.float64)
    xs = torch.arange(size[1], dtype=torch.float64)
    cy = float((acc.sum(1) * ys).sum()) / total
    cx = float((acc.sum(0) * xs).sum()) / total
    sy, sx = size[0] / h, size[1] / w
    return CellGeometry(cy - sy * i, cx - sx * j, sy, sx)


def upsample_registered(maps: torch.Tensor, size: tuple[int, int], geo: CellGeometry) -> torch.Tensor:
    """Bilinear resampling of maps [B, h, w] to [B, H, W], cell (a, b) placed at (c_y + a·s_y, c_x + b·s_x).

    Outside the first/last cell centres the border value is kept (as half-pixel interpolation does), so with
    ``CellGeometry.half_pixel`` this equals ``F.interpolate(mode="bilinear", align_corners=False)``.
    """
    B, h, w = maps.shape
    H, W = size
    dev, dt = maps.device, maps.dtype if maps.dtype in (torch.float32, torch.float64) else torch.float32
    u = (torch.arange(H, device=dev, dtype=torch.float64) - geo.centre_y) / geo.stride_y  # map rows sampled
    v = (torch.arange(W, device=dev, dtype=torch.float64) - geo.centre_x) / geo.stride_x
    gy = (u / max(h - 1, 1) * 2 - 1) if h > 1 else torch.zeros_like(u)  # align_corners=True grid: -1/+1 = centres
    gx = (v / max(w - 1, 1) * 2 - 1) if w > 1 else torch.zeros_like(v)
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1).to(dt)  # [H, W, 2] as (x, y)
    out = F.grid_sample(maps[:, None].to(dt), grid.expand(B, H, W, 2), mode="bilinear", padding_mode="border",
                        align_corners=True)
    return out[:, 0]
