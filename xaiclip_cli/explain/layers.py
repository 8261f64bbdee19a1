"""Target layers: spatial layout of a module output (NCHW/NHWC/NLD), token reshape, and automatic layer detection.

Hand-written because no library detects a CLIP tower's CAM layer by gradient: pytorch-grad-cam asks the user for the
layer and reshapes ViT tokens with a fixed ``[:, 1:]`` slice and a 14x14 grid, which is wrong for SigLIP (no CLS),
registers and other input sizes. Here the grid comes from the input size and the patch size, the prefix from the
backend, and the layer is the last one whose output is spatial *and* receives a non-zero gradient at the spatial
positions (one forward and backward pass with hooks).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from xaiclip_cli.errors import UsageError, XaiclipError

Layout = Literal["NCHW", "NHWC", "NLD"]

# Modules whose output is never a useful CAM layer: aliases (Identity), stochastic no-ops, projections whose
# channels mix q/k/v (Linear), attention probabilities (Softmax). Skipping them keeps "last spatial module with a
# gradient" on the representation itself (e.g. a ViT's norm1 rather than its attn.qkv).
_SKIP_TYPES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Linear, nn.Softmax,
)


@dataclass
class LayerInfo:
    """A module whose output can be read as a spatial map, with its gradient norm at the spatial positions."""

    name: str
    shape: tuple[int, ...]
    layout: Layout
    prefix: int
    grid: tuple[int, int]
    grad_norm: float | None = None
    chosen: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (lists instead of tuples)."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["grid"] = list(self.grid)
        return d


def first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a module returned (first element of a tuple/list, ``last_hidden_state`` of a model output)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    hidden = getattr(output, "last_hidden_state", None)
    return hidden if isinstance(hidden, torch.Tensor) else None


def token_grid_for(
    n_tokens: int, input_hw: tuple[int, int] | None = None, patch: int | None = None,
    grid: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """Grid of ``n_tokens`` patch tokens: explicit grid, else input size / patch, else a square root fallback."""
    if grid is None and input_hw is not None and patch:
        grid = (input_hw[0] // patch, input_hw[1] // patch)
    if grid is None:
        side = math.isqrt(n_tokens)
        if side * side != n_tokens:
            raise ValueError(f"cannot infer a token grid: {n_tokens} tokens is not a square; give the grid")
        grid = (side, side)
    if grid[0] * grid[1] != n_tokens:
        raise ValueError(f"token count mismatch: {n_tokens} patch tokens do not fill a {grid[0]}x{grid[1]} grid")
    return (int(grid[0]), int(grid[1]))


def reshape_tokens(
    tokens: torch.Tensor, prefix: int, grid: tuple[int, int] | None = None,
    input_hw: tuple[int, int] | None = None, patch: int | None = None,
) -> torch.Tensor:
    """[B, L, D] tokens → [B, D, gh, gw]: drop ``prefix`` CLS/register tokens, then lay the rest on the grid."""
    if tokens.ndim != 3:
        raise ValueError(f"expected tokens [B, L, D], got shape {tuple(tokens.shape)}")
    if prefix < 0 or prefix >= tokens.shape[1]:
        raise ValueError(f"prefix {prefix} out of range for {tokens.shape[1]} tokens")
    patches = tokens[:, prefix:, :]
    gh, gw = token_grid_for(patches.shape[1], input_hw, patch, grid)
    return patches.reshape(patches.shape[0], gh, gw, patches.shape[2]).permute(0, 3, 1, 2)


def to_nchw(t: torch.Tensor, layout: Layout, prefix: int = 0, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Any supported layer output → [B, C, h, w] (NHWC is permuted, NLD reshaped)."""
    if layout == "NCHW":
        return t
    if layout == "NHWC":
        return t.permute(0, 3, 1, 2)
    if layout == "NLD":
        return reshape_tokens(t, prefix, grid)
    raise ValueError(f"unknown layout {layout!r}")


def _stride_ok(size: int, extent: int) -> bool:
    return extent > 1 and size % extent == 0


def spatial_layout(
    shape: tuple[int, ...], input_hw: tuple[int, int], prefix: int, grid: tuple[int, int] | None,
) -> tuple[Layout, int, tuple[int, int]] | None:
    """(layout, prefix, grid) when an output of ``shape`` is a spatial map for an input of ``input_hw``, else None.

    4-D outputs count when two axes divide the input size by one common integer stride (NCHW tried first, then
    NHWC, as timm's Swin/ConvNeXt-NHWC emit); 3-D outputs count when L − prefix fills the token grid.
    """
    H, W = input_hw
    if len(shape) == 4:
        a, b, c = shape[1], shape[2], shape[3]
        if _stride_ok(H, b) and _stride_ok(W, c) and H // b == W // c:
            return "NCHW", 0, (b, c)
        if _stride_ok(H, a) and _stride_ok(W, b) and H // a == W // b:
            return "NHWC", 0, (a, b)
        return None
    if len(shape) == 3:
        n = shape[1] - prefix
        if n <= 1:
            return None
        try:
            g = token_grid_for(n, grid=grid) if grid is not None else token_grid_for(n)
        except ValueError:
            return None
        if g[0] > 1 and g[1] > 1:
            return "NLD", prefix, g
    return None


def backend_grid(backend: Any, input_hw: tuple[int, int]) -> tuple[int, int] | None:
    """Token grid for this input size: (H/patch, W/patch) from the backend's patch size, None for CNN towers."""
    patch = getattr(backend, "patch_size", None)
    if patch:
        return (input_hw[0] // patch, input_hw[1] // patch)
    return getattr(backend, "token_grid", None)


def find_module(root: nn.Module, name: str) -> nn.Module:
    """The submodule at a dotted ``name``; a UsageError lists close names when it does not exist."""
    try:
        return root.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in root.named_modules() if n]
        tail = name.split(".")[-1]
        close = [n for n in names if n.endswith(tail)][-5:] or names[-5:]
        raise UsageError(
            f"--target-layer {name!r} is not a module of the image tower (e.g. {', '.join(close)}; "
            "see `xaiclip cam layers`)"
        ) from None


@contextlib.contextmanager
def _record_all(
    root: nn.Module, keep: Callable[[str, nn.Module], bool],
) -> Iterator[list[tuple[str, torch.Tensor, bool]]]:
    """Forward hooks on every kept module, recording (name, output, returned-as-a-plain-tensor) in completion order."""
    records: list[tuple[str, torch.Tensor, bool]] = []
    handles = []
    try:
        for name, mod in root.named_modules():
            if not name or not keep(name, mod):
                continue

            def hook(_m: nn.Module, _inp: Any, out: Any, _name: str = name) -> None:
                t = first_tensor(out)
                if t is not None and t.requires_grad:
                    records.append((_name, t, isinstance(out, torch.Tensor)))

            handles.append(mod.register_forward_hook(hook))
        yield records
    finally:
        for h in handles:
            h.remove()


def _multi_scale(name: str, grids: dict[str, tuple[int, int]]) -> bool:
    """True for a container whose direct children output maps of different grids (``stages``, ``layers``)."""
    depth = name.count(".") + 1
    kids = {g for m, g in grids.items() if m.startswith(name + ".") and m.count(".") == depth}
    return len(kids | {grids[name]}) > 1


def _spatial_grad_norm(g: torch.Tensor | None, layout: Layout, prefix: int) -> float:
    if g is None:
        return 0.0
    if layout == "NLD":
        g = g[:, prefix:, :]
    return float(g.detach().float().norm())


def scan_layers(
    backend: Any, pixels: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor],
) -> list[LayerInfo]:
    """All spatial candidate layers in completion order, with the gradient norm of ``objective`` at their positions.

    ``objective`` maps the image global features [B, D] to one scalar per image [B]; one forward and one backward
    pass. Modules returning the very same tensor (a container and its last child) are listed once, under the
    outermost name, which is also the last to complete.
    """
    vision = backend.vision_module()
    input_hw = (int(pixels.shape[-2]), int(pixels.shape[-1]))
    grid = backend_grid(backend, input_hw)
    prefix = int(getattr(backend, "num_prefix_tokens", 0) or 0)
    with torch.enable_grad(), _record_all(vision, lambda n, m: not isinstance(m, _SKIP_TYPES)) as records:
        # Input requires grad: frozen towers (weights with requires_grad=False) still build a graph.
        image_global, _ = backend.encode_image(pixels.detach().requires_grad_(True))
        total = objective(image_global).sum()
        spatial = []
        direct: set[str] = set()
        for name, t, is_tensor in records:
            found = spatial_layout(tuple(t.shape), input_hw, prefix, grid)
            if found is not None:
                spatial.append((name, t, found))
                if is_tensor:
                    direct.add(name)
        grids = {name: found[2] for name, _, found in spatial}
        # Several modules can return the very same tensor (a container and its last child, an in-place activation):
        # list it once, at its last completion, under the outermost name that is not a multi-scale container
        # (``stages`` holds grids of every resolution; ``stages.3``/``layer4`` hold one), preferring modules that
        # return the tensor itself over models returning it inside an output object (HF ``last_hidden_state``).
        groups: dict[int, list[str]] = {}
        order: dict[int, int] = {}
        tensor_of: dict[int, torch.Tensor] = {}
        for pos, (name, t, _found) in enumerate(spatial):
            groups.setdefault(id(t), []).append(name)
            order[id(t)] = pos
            tensor_of[id(t)] = t
        infos: list[LayerInfo] = []
        tensors: list[torch.Tensor] = []
        for key in sorted(groups, key=lambda k: order[k]):
            names = groups[key]
            single = [n for n in names if not _multi_scale(n, grids)] or names
            best = min([n for n in single if n in direct] or single, key=lambda n: (n.count("."), len(n)))
            t = tensor_of[key]
            layout, pfx, g = spatial_layout(tuple(t.shape), input_hw, prefix, grid)  # type: ignore[misc]
            infos.append(LayerInfo(best, tuple(int(s) for s in t.shape), layout, pfx, g))
            tensors.append(t)
        if not infos:
            raise XaiclipError("no module of the image tower has a spatial output; set --target-layer")
        if not total.requires_grad:
            raise XaiclipError("the score does not depend on the image tower (no gradient); check the model")
        grads = torch.autograd.grad(total, tensors, allow_unused=True)
    for info, g in zip(infos, grads, strict=True):
        info.grad_norm = _spatial_grad_norm(g, info.layout, info.prefix)
    return infos


def choose_layer(infos: list[LayerInfo]) -> LayerInfo:
    """The last candidate with a non-zero spatial gradient (marked ``chosen``); an error names why none qualifies."""
    for info in reversed(infos):
        if info.grad_norm and info.grad_norm > 0 and math.isfinite(info.grad_norm):
            info.chosen = True
            return info
    raise XaiclipError(
        "no spatial layer of the image tower receives a gradient from the score; the model may be untrained or the "
        "score constant (softmax over one text): use --score logit or set --target-layer"
    )


def describe_layer(backend: Any, name: str, pixels: torch.Tensor) -> LayerInfo:
    """Shape, layout, prefix and grid of a user-named layer (one forward pass, no gradient)."""
    vision = backend.vision_module()
    module = find_module(vision, name)
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        t = first_tensor(out)
        if t is not None:
            captured.append(t)

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            backend.encode_image(pixels[:1])
    finally:
        handle.remove()
    if not captured:
        raise UsageError(f"--target-layer {name!r} was not run by the image tower's forward pass")
    shape = tuple(int(s) for s in captured[-1].shape)
    input_hw = (int(pixels.shape[-2]), int(pixels.shape[-1]))
    prefix = int(getattr(backend, "num_prefix_tokens", 0) or 0)
    found = spatial_layout(shape, input_hw, prefix, backend_grid(backend, input_hw))
    if found is None:
        raise UsageError(f"--target-layer {name!r} outputs shape {list(shape)}, which is not a spatial map "
                         "(need NxCxHxW, NxHxWxC or NxLxD tokens on the patch grid)")
    layout, pfx, grid = found
    return LayerInfo(name, shape, layout, pfx, grid)
