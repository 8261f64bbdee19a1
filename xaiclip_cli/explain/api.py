"""Python API of `cam`: ``explain()`` → CamResults, ``save()`` → files, and the legacy ``visualize_clip_gradcam``."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaiclip_cli.errors import UsageError
from xaiclip_cli.explain.cam import METHODS
from xaiclip_cli.explain.cam.engine import compute_maps, minmax, upsample_maps
from xaiclip_cli.explain.cam.legrad import EMPTY_PROMPT, EMPTY_THRESHOLD, find_vit, layer_indices, layer_label
from xaiclip_cli.explain.layers import LayerInfo, backend_grid, choose_layer, describe_layer, scan_layers
from xaiclip_cli.explain.registration import CellGeometry, receptive_field_centres
from xaiclip_cli.explain.targets import normalise_texts, parse_target

SIDECAR_VERSION = 1


@dataclass
class CamResult:
    """One map for one image and one target text, with everything the sidecar records."""

    raw: np.ndarray  # h×w float32, before ReLU
    map: np.ndarray  # H×W float32 at the model input size, after ReLU and upsampling, unnormalised
    display: np.ndarray  # H×W float32 after --normalise (what the PNGs show)
    image: np.ndarray  # original uint8 HWC (grey kept as HxWx1)
    image_index: int
    target_index: int
    target_name: str
    target_rule: str
    names: list[str]
    prompts: list[str]
    logits: list[float]
    probs: list[float]
    scores: list[float]
    target_score: float
    score_kind: str
    method: str
    params: dict[str, Any]
    layer: LayerInfo
    all_zero: bool
    normalise: str
    source: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def sidecar(self) -> dict[str, Any]:
        """The JSON sidecar of this map (cam.md §6)."""
        return {
            "version": SIDECAR_VERSION,
            **self.meta,
            "image": self.source,
            "channels_in": int(self.image.shape[2]) if self.image.ndim == 3 else 1,
            "texts": [{"name": n, "prompt": p} for n, p in zip(self.names, self.prompts, strict=True)],
            "target_index": self.target_index,
            "target_name": self.target_name,
            "target_rule": self.target_rule,
            "score": self.score_kind,
            "logits": self.logits,
            "probabilities": self.probs,
            "scores": self.scores,
            "target_score": self.target_score,
            "method": self.method,
            "method_params": self.params,
            "layer": self.layer.as_dict(),
            "relu": True,
            "normalisation": self.normalise,
            "raw_min": float(self.raw.min()),
            "raw_max": float(self.raw.max()),
            "map_min": float(self.map.min()),
            "map_max": float(self.map.max()),
            "map_size": list(self.map.shape),
            "all_zero": self.all_zero,
        }


def load_image(path: str | Path, intensity: str | None = None) -> np.ndarray:
    """Read an image file as uint8 HWC (grey stays HxWx1) through the one decoder of every group (data.imageio)."""
    from xaiclip_cli.data.imageio import read_image

    return read_image(path, intensity)[0]


def _as_uint8(img: Any) -> np.ndarray:
    if isinstance(img, (str, Path)):
        return load_image(img)
    if hasattr(img, "convert") and hasattr(img, "mode"):
        return np.array(img.convert("L"))[:, :, None] if img.mode == "L" else np.array(img.convert("RGB"))
    arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


class CamRunner:
    """A backend, encoded texts and a resolved layer: turns batches of images into CamResults."""

    def __init__(
        self,
        backend: Any,
        texts: Mapping[str, str] | Sequence[str] | str,
        method: str = "gradcam",
        target: str | int = "best",
        layer: str | None = None,
        score: str = "logit",
        *,
        score_batch: int = 16,
        topk: int = 300,
        unselected: str = "ref",
        normalise: str = "minmax",
        meta: dict[str, Any] | None = None,
        legrad_layers: int = 0,
        align: str = "receptive-field",
    ) -> None:
        if method not in METHODS:
            raise UsageError(f"unknown --method {method!r} (choose from {', '.join(METHODS)})")
        self.legrad_layers = int(legrad_layers)
        self.legrad_blocks: list[int] = []
        self.legrad_map_pool = False
        if method == "legrad":
            if layer:
                raise UsageError("--target-layer does not apply to --method legrad (it explains the attention of the "
                                 "last blocks); drop it and set --legrad-layers K instead")
            tower = find_vit(backend)  # CNN and unsupported towers are refused here, before any image is read
            self.legrad_blocks = layer_indices(tower.depth, self.legrad_layers)
            self.legrad_map_pool = tower.map_pool
        if align not in ("receptive-field", "half-pixel"):
            raise UsageError(f"unknown --align {align!r} (receptive-field or half-pixel)")
        self.align = align
        self._geometry: dict[tuple[str, tuple[int, int]], CellGeometry | None] = {}
        if score == "sigmoid" and getattr(backend, "score_family", "softmax") != "sigmoid":
            raise UsageError("--score sigmoid is for SigLIP-style models (bias + sigmoid); use logit or softmax")
        self.backend = backend
        backend.vision_module().eval()  # dropout/batch-norm statistics off: batch maps must equal single maps
        self.names, self.prompts = normalise_texts(texts)
        self.method, self.score, self.layer_name = method, score, layer
        self.target = parse_target(target, self.names)
        self.score_batch, self.topk, self.unselected, self.normalise = score_batch, topk, unselected, normalise
        self.layer: LayerInfo | None = None
        self.candidates: list[LayerInfo] = []
        self.meta = dict(meta or {})
        with torch.no_grad():
            self.text_global = backend.encode_texts(self.prompts).detach()

    @property
    def params(self) -> dict[str, Any]:
        """Method parameters recorded in sidecars."""
        p: dict[str, Any] = {}
        if self.method in ("scorecam", "gscorecam"):
            p["score_batch"] = self.score_batch
        if self.method == "gscorecam":
            p["topk"] = self.topk
            p["unselected"] = self.unselected
        if self.method == "legrad":
            map_pool = self.legrad_map_pool
            p["legrad_layers"] = self.legrad_layers
            p["blocks"] = self.legrad_blocks
            p["probabilities"] = "attn_pool" if map_pool else "self-attention (mean token)"
            p["empty_prompt"] = EMPTY_PROMPT if map_pool else None
            p["empty_threshold"] = EMPTY_THRESHOLD if map_pool else None
        return p

    def pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Preprocess uint8 images with the backend's own preprocessing, on its device."""
        return self.backend.preprocess(list(images)).to(self.backend.device)

    def resolve_layer(self, pixels: torch.Tensor) -> LayerInfo:
        """The forced layer (described) or the auto-detected one (scan on the first image); cached."""
        if self.layer is not None:
            return self.layer
        if self.method == "legrad":
            self.layer = legrad_layer(self.backend, pixels, self.legrad_blocks)
            return self.layer
        if self.layer_name:
            self.layer = describe_layer(self.backend, self.layer_name, pixels)
            return self.layer
        kind = "cosine" if self.score == "dot" else self.score  # same layers get gradient; the scan sees ĝ only
        text = self.text_global
        target = self.target

        def objective(g: torch.Tensor) -> torch.Tensor:
            s = self.backend.score(g, text, kind)
            if isinstance(target, int):
                return s[:, target]
            return s.gather(1, self.backend.score(g.detach(), text, "logit").argmax(1, keepdim=True))[:, 0]

        self.candidates = scan_layers(self.backend, pixels[:1], objective)
        self.layer = choose_layer(self.candidates)
        return self.layer

    def run(self, images: Sequence[Any], sources: Sequence[dict[str, Any]] | None = None,
            batch_size: int = 8) -> list[CamResult]:
        """Explain ``images`` (paths, PIL, arrays) in batches; one CamResult per image and target."""
        arrays = [_as_uint8(im) for im in images]
        srcs = list(sources) if sources is not None else [{} for _ in arrays]
        out: list[CamResult] = []
        K = len(self.names)
        jobs: list[tuple[int, int | None]] = []
        for i in range(len(arrays)):
            if self.target == "all":
                jobs.extend((i, j) for j in range(K))
            else:
                jobs.append((i, self.target if isinstance(self.target, int) else None))
        for start in range(0, len(jobs), max(1, batch_size)):
            chunk = jobs[start:start + batch_size]
            out.extend(self._run_jobs(arrays, srcs, chunk))
        return out

    def geometry(self, layer: LayerInfo, size: tuple[int, int]) -> CellGeometry | None:
        """Measured cell geometry of a CNN (NCHW) layer for ``--align receptive-field``; None = half-pixel (token
        grids, NHWC towers whose patch merging is half-pixel by construction, or ``--align half-pixel``)."""
        if self.align != "receptive-field" or layer.layout != "NCHW":  # legrad's layer is a token grid (NLD)
            return None
        key = (layer.name, size)
        if key not in self._geometry:
            self._geometry[key] = receptive_field_centres(self.backend, layer, size)
        return self._geometry[key]

    def _run_jobs(self, arrays: list[np.ndarray], srcs: list[dict[str, Any]],
                  jobs: list[tuple[int, int | None]]) -> list[CamResult]:
        t0 = time.perf_counter()
        unique = sorted({i for i, _ in jobs})  # with --target all an image appears once per text: preprocess once
        pix = self.pixels([arrays[i] for i in unique])
        pixels = pix[torch.tensor([unique.index(i) for i, _ in jobs], device=pix.device)]
        layer = self.resolve_layer(pixels)
        targets = None if any(j is None for _, j in jobs) else [j for _, j in jobs]
        bm = compute_maps(self.backend, pixels, self.text_global, targets, self.method, layer, self.score,
                          score_batch=self.score_batch, topk=self.topk, unselected=self.unselected,
                          legrad_layers=self.legrad_layers)
        size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        geometry = self.geometry(layer, size)
        maps = upsample_maps(bm.raw, size, geometry=geometry)
        display = minmax(maps) if self.normalise == "minmax" else maps
        raw_np = bm.raw.cpu().numpy().astype(np.float32)
        maps_np = maps.cpu().numpy().astype(np.float32)
        disp_np = display.cpu().numpy().astype(np.float32)
        logits = bm.logits.cpu().numpy().astype(np.float64)
        scores = bm.scores.cpu().numpy().astype(np.float64)
        tgts = bm.targets.cpu().tolist()
        runtime = (time.perf_counter() - t0) / max(1, len(jobs))
        rule = self.target if isinstance(self.target, str) else "index"
        results = []
        for b, (i, _) in enumerate(jobs):
            t = int(tgts[b])
            all_zero = not bool(maps_np[b].max() > 0)
            meta = {**self.meta, "runtime_s": runtime, "device": str(pixels.device), "dtype": str(pixels.dtype),
                    "input_size": list(size), "align": self.align if geometry is not None else "half-pixel",
                    "cell_geometry": geometry.as_dict() if geometry is not None else None}
            results.append(CamResult(
                raw=raw_np[b], map=maps_np[b], display=disp_np[b], image=arrays[i], image_index=i,
                target_index=t, target_name=self.names[t], target_rule=rule, names=self.names, prompts=self.prompts,
                logits=[float(x) for x in logits[b]], probs=[float(x) for x in _softmax(logits[b])],
                scores=[float(x) if math.isfinite(x) else None for x in scores[b]],  # type: ignore[misc]
                target_score=float(scores[b, t]), score_kind=self.score, method=self.method, params=self.params,
                layer=layer, all_zero=all_zero, normalise=self.normalise,
                source={**srcs[i], "height": int(arrays[i].shape[0]), "width": int(arrays[i].shape[1])}, meta=meta,
            ))
        return results


def legrad_layer(backend: Any, pixels: torch.Tensor, blocks: list[int]) -> LayerInfo:
    """The sidecar's layer record for legrad: the explained blocks as one NLD token layer (no forward pass)."""
    tower = find_vit(backend)
    input_hw = (int(pixels.shape[-2]), int(pixels.shape[-1]))
    grid = backend_grid(backend, input_hw) or tuple(tower.trunk.patch_embed.grid_size)
    gh, gw = int(grid[0]), int(grid[1])
    width = tower.width or int(getattr(tower.trunk, "embed_dim", 0) or getattr(tower.trunk, "num_features", 0))
    return LayerInfo(layer_label(tower, blocks), (1, tower.prefix + gh * gw, width), "NLD", tower.prefix, (gh, gw))


def explain(
    model_or_adapter: Any,
    images: Any,
    texts: Mapping[str, str] | Sequence[str] | str,
    method: str = "gradcam",
    target: str | int = "best",
    layer: str | None = None,
    score: str = "logit",
    *,
    batch_size: int = 8,
    score_batch: int = 16,
    topk: int = 300,
    unselected: str = "ref",
    normalise: str = "minmax",
    legrad_layers: int = 0,
    align: str = "receptive-field",
) -> list[CamResult]:
    """Heatmaps of image–text alignment: one CamResult per image (and per text with ``target="all"``).

    ``model_or_adapter`` is a ClipBackend (``xaiclip_cli.models.registry.load_backend``); ``images`` are paths, PIL
    images or uint8 arrays (one or a list); ``texts`` a list of prompts or ``{name: prompt}``; ``legrad_layers`` the
    last K blocks that ``method="legrad"`` explains (0 = all); ``align`` where a CNN map's cells land on the image
    (``receptive-field``: measured centres, see explain.registration; ``half-pixel``: as pytorch-grad-cam).
    """
    for attr in ("preprocess", "encode_image", "encode_texts", "score", "vision_module"):
        if not hasattr(model_or_adapter, attr):
            raise TypeError(f"explain() needs a ClipBackend (missing {attr}); use models.registry.load_backend")
    single_array = isinstance(images, np.ndarray) and images.ndim in (2, 3)
    if isinstance(images, (str, Path)) or single_array or (hasattr(images, "convert") and hasattr(images, "mode")):
        images = [images]
    elif isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    srcs = [{"path": str(im)} if isinstance(im, (str, Path)) else {} for im in images]
    runner = CamRunner(model_or_adapter, texts, method, target, layer, score, score_batch=score_batch, topk=topk,
                       unselected=unselected, normalise=normalise, legrad_layers=legrad_layers, align=align,
                       meta={"backend": getattr(model_or_adapter, "name", type(model_or_adapter).__name__)})
    return runner.run(images, srcs, batch_size=batch_size)


def safe_name(text: str, limit: int = 40) -> str:
    """A file-name-safe slug of a text name."""
    keep = "".join(c if c.isalnum() or c in "-_" else "_" for c in text.strip())
    keep = "_".join(p for p in keep.split("_") if p)
    return (keep or "text")[:limit]


def default_name(stem: str, method: str, target_name: str) -> str:
    """``<stem>_<method>_<target>`` (cam.md §6)."""
    return f"{stem}_{method.replace('++', 'pp')}_{safe_name(target_name)}"


def save_result(
    result: CamResult, directory: str | Path, name: str, *, figure: bool = True, raw: bool = True,
    colormap: str = "jet", alpha: float = 0.5, manifest: str | Path | None = None,
) -> dict[str, str]:
    """Write ``<name>.png`` (figure), ``<name>_overlay.png``, ``<name>.npz`` and ``<name>.json``; append the manifest.

    The sidecar is written last, so an image with a sidecar is complete (resume skips it).
    """
    import os

    from xaiclip_cli.viz.figure import cam_figure
    from xaiclip_cli.viz.overlay import overlay, save_png

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if figure:
        title = f"{result.method} | target: {result.target_name} | {result.layer.name}"
        cam_figure(result.image, result.display, result.probs, result.names, result.target_index,
                   str(d / f"{name}.png"), title=title, alpha=alpha, colormap=colormap)
        files["figure"] = f"{name}.png"
    save_png(overlay(result.image, result.display, alpha=alpha, colormap=colormap), str(d / f"{name}_overlay.png"))
    files["overlay"] = f"{name}_overlay.png"
    if raw:
        tmp = d / f".{name}.tmp.npz"
        np.savez(tmp, raw=result.raw.astype(np.float32), map=result.map.astype(np.float32))
        os.replace(tmp, d / f"{name}.npz")
        files["npz"] = f"{name}.npz"
    side = result.sidecar()
    side["files"] = files
    side["visual"] = {"colormap": colormap, "alpha": alpha}
    text = json.dumps(side, indent=2, ensure_ascii=False, default=str)
    tmp_json = d / f".{name}.json.tmp"
    tmp_json.write_text(text, encoding="utf-8")
    os.replace(tmp_json, d / f"{name}.json")
    files["sidecar"] = f"{name}.json"
    if manifest is not None:
        line = {"name": name, "dir": str(d), **{k: side[k] for k in ("image", "method", "target_index",
                                                                        "target_name", "score", "all_zero")},
                "target_score": side["target_score"], "layer": side["layer"]["name"], "files": files}
        with open(manifest, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
    return files


def save(results: Sequence[CamResult], directory: str | Path, **kwargs: Any) -> list[dict[str, str]]:
    """Save every result under ``directory`` with default names, appending ``manifest.jsonl``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for r in results:
        path = r.source.get("path")
        stem = Path(path).stem if path else f"image{r.image_index:05d}"
        out.append(save_result(r, d, default_name(stem, r.method, r.target_name), manifest=d / "manifest.jsonl",
                               **kwargs))
    return out


def visualize_clip_gradcam(
    model: Any, image_path: str | Path, class_texts: Mapping[str, str] | Sequence[str], save_path: str | Path,
    target_text_idx: int | None = None, method: str = "gradcam",
) -> CamResult:
    """Legacy call: explain one image and write the four-panel figure to ``save_path`` (+ overlay, npz, sidecar)."""
    target: str | int = "best" if target_text_idx is None else int(target_text_idx)
    (result,) = explain(model, [image_path], class_texts, method=method, target=target)
    sp = Path(save_path)
    name = sp.stem
    save_result(result, sp.parent if str(sp.parent) else ".", name)
    return result
