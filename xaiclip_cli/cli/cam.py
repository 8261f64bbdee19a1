"""The `xaiclip cam` command group: `cam run`, `cam layers`, `cam methods`."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, Field

from xaiclip_cli.cli.app import group_app
from xaiclip_cli.cli.command import settings_command
from xaiclip_cli.cli.output import RunContext
from xaiclip_cli.config.cam import CamSettings

app = group_app("Grad-CAM-family heatmaps of image-text alignment for CNN and ViT/SigLIP image towers.")
log = logging.getLogger("xaiclip.cam")

_MODEL_FIELDS = ["backend", "model", "revision", "trust_remote_code", "checkpoint", "image_encoder", "text_encoder",
                 "embed_dim", "img_size", "device", "cpu", "seed", "threads", "log_level"]


class CamRunResult(BaseModel):
    """cam run: what was explained and where the files are."""

    output_dir: str
    backend: str
    model: str | None
    method: str
    score: str
    layer: str | None
    layer_shape: list[int] = Field(default_factory=list)
    layout: str | None = None
    images: int = 0
    maps: int = 0
    skipped: int = 0
    failed: int = 0
    all_zero: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    manifest: str | None = None
    rows: list[dict[str, Any]] = Field(default_factory=list)


class CamLayersResult(BaseModel):
    """cam layers: spatial candidate layers of the image tower (chosen = auto target layer)."""

    backend: str
    model: str | None
    chosen: str
    candidates: list[dict[str, Any]]


class CamMethodsResult(BaseModel):
    """cam methods: CAM methods and what they need."""

    methods: list[dict[str, Any]]


def cam_worker(payload: dict[str, Any], rank: int, world: int, device: str, advance: Any) -> dict[str, Any]:
    """Compatibility entry of the library worker (``explain.cam_job.cam_worker``)."""
    from xaiclip_cli.explain.cam_job import cam_worker as worker

    return worker(payload, rank, world, device, advance)


# --- commands -----------------------------------------------------------------------------------------------------
@settings_command(app, CamSettings, name="run")
def run(s: CamSettings, ctx: RunContext) -> CamRunResult:
    """Draw heatmaps of image-text alignment for images, folders, globs or a dataset, in batches.

    Each image gets <name>.png (original, heatmap, overlay, probabilities), <name>_overlay.png, <name>.npz (raw map
    before ReLU and the upsampled map) and <name>.json, plus a line in manifest.jsonl. Images whose sidecar exists
    are skipped (resume); --overwrite recomputes them. --gpus 0,1 runs one worker per GPU; under torchrun/SLURM each
    rank takes every world-th image and writes manifest.rank<R>.jsonl. Outputs of a file-backed --dataset are named
    after their files. The settings go to config.yaml (config-<hash>.yaml when config.yaml holds another run's).
    Example: xaiclip cam run --images cells/ --text "a neutrophil" --text "a lymphocyte" --method gradcam
    """
    from xaiclip_cli.explain.cam_job import run_cam

    stats = run_cam(s, ctx.progress, ctx.warn)
    ctx.exit_code = stats["exit_code"]
    layer = stats["layer"] or {}
    n_img, seconds = stats["images"], stats["seconds"]
    return CamRunResult(
        output_dir=str(s.output_dir), backend=stats["backend"], model=stats["model"], method=s.method, score=s.score,
        layer=layer.get("name"), layer_shape=layer.get("shape", []), layout=layer.get("layout"), images=n_img,
        maps=stats["maps"], skipped=stats["skipped"], failed=stats["failed"], all_zero=stats["all_zero"],
        seconds=round(seconds, 3), images_per_s=round(n_img / seconds, 3) if seconds > 0 and n_img else 0.0,
        manifest=stats["manifest"], rows=stats["rows"],
    )


@settings_command(app, CamSettings, name="layers",
                  fields=[*_MODEL_FIELDS, "text", "texts_file", "target", "images", "dataset", "intensity", "split",
                          "score", "target_layer"])
def layers(s: CamSettings, ctx: RunContext) -> CamLayersResult:
    """List the image tower's spatial layers (shape, layout, prefix, grid, gradient norm) and mark the auto choice.

    One forward and backward pass on the first image (a seeded noise image without --images/--dataset); the chosen
    layer is the last one whose spatial positions receive a non-zero gradient. Pass the name to --target-layer.
    """
    import numpy as np
    import torch

    from xaiclip_cli.explain.api import CamRunner
    from xaiclip_cli.explain.cam_job import cam_items, cam_texts, load_cam_backend

    texts = cam_texts(s, required=False)
    if s.images or s.dataset:
        image = cam_items(s)[0].load()
    else:
        image = None
    backend = load_cam_backend(s)
    if image is None:
        size = int(getattr(backend, "image_size", 224))
        image = np.random.default_rng(s.seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    runner = CamRunner(backend, texts, "gradcam", s.target, None, s.score)
    with torch.no_grad():
        pixels = runner.pixels([image])
    runner.resolve_layer(pixels)
    rows = []
    for info in runner.candidates:
        d = info.as_dict()
        d["grad_norm"] = float(f"{d['grad_norm']:.4g}") if d["grad_norm"] is not None else None
        d["chosen"] = "*" if info.chosen else ""
        if s.target_layer and info.name == s.target_layer:
            d["chosen"] = (d["chosen"] + " given").strip()
        rows.append(d)
    chosen = runner.layer.name if runner.layer else ""
    return CamLayersResult(backend=s.backend if s.checkpoint is None else "checkpoint",
                           model=str(s.checkpoint) if s.checkpoint else s.model, chosen=chosen, candidates=rows)


@settings_command(app, CamSettings, name="methods", fields=[])
def methods(s: CamSettings, ctx: RunContext) -> CamMethodsResult:
    """List the CAM methods: family, whether they need gradients, extra forwards, text awareness, towers."""
    from xaiclip_cli.explain.cam import METHODS

    return CamMethodsResult(methods=[
        {"method": m.name, "family": m.family, "gradient": m.needs_gradient, "extra_forwards": m.extra_forwards,
         "uses_text": m.text_aware, "towers": m.towers, "summary": m.summary}
        for m in METHODS.values()
    ])
