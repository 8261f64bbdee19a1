"""The `xaiclip cam` command group: `cam run`, `cam layers`, `cam methods`."""

from __future__ import annotations

import contextlib
import glob
import logging
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from xaiclip_cli.cli.app import group_app
from xaiclip_cli.cli.command import settings_command
from xaiclip_cli.cli.output import RunContext
from xaiclip_cli.config.cam import CamSettings
from xaiclip_cli.data.formats import IMAGE_EXTENSIONS as _IMAGE_SUFFIXES
from xaiclip_cli.data.formats import is_volume_name, volume_message
from xaiclip_cli.errors import UsageError, XaiclipError

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


# --- helpers ------------------------------------------------------------------------------------------------------
def _device(s: CamSettings) -> str:
    return "cpu" if s.cpu else s.device


def _load_backend(s: CamSettings) -> Any:
    """Load the backend named by the settings (--checkpoint implies the checkpoint backend)."""
    import torch

    from xaiclip_cli.models.registry import load_backend

    torch.manual_seed(s.seed)
    if s.threads:
        torch.set_num_threads(s.threads)
    name, model = s.backend, s.model
    if s.checkpoint is not None:
        name, model = "checkpoint", str(s.checkpoint)
        if not s.checkpoint.exists():
            raise UsageError(f"--checkpoint {s.checkpoint}: not found")
        if s.checkpoint.is_file():
            raise UsageError(
                f"--checkpoint {s.checkpoint}: a raw state-dict file is not supported yet; pass the export folder "
                "written by `xaiclip train clip` (model.safetensors + clip_spec + tokenizer)"
            )
    backend = load_backend(name, model, revision=s.revision, device=_device(s),
                           trust_remote_code=s.trust_remote_code)
    if s.checkpoint is not None:
        _warn_tower_mismatch(s, backend)
    for field, attr in (("embed_dim", "embed_dim"), ("img_size", "image_size")):
        given, actual = getattr(s, field), getattr(backend, attr, None)
        if field in s.model_fields_set and given is not None and actual is not None and int(given) != int(actual):
            log.warning("--%s %s ignored: the model's %s is %s", field.replace("_", "-"), given, attr, actual)
    return backend


def _warn_tower_mismatch(s: CamSettings, backend: Any) -> None:
    """Legacy --text-encoder/--image-encoder must match training: warn when the checkpoint records another tower."""
    try:
        prov = backend.provenance()
    except Exception:  # noqa: BLE001 - provenance is informative only
        return
    given = {"text_encoder": "text_tower", "image_encoder": "image_tower"}
    for field, key in given.items():
        value, recorded = getattr(s, field), prov.get(key) if isinstance(prov, dict) else None
        if field not in s.model_fields_set or not value or not isinstance(recorded, str):
            continue
        a, b = value.lower().replace("-", "_"), recorded.lower().replace("-", "_")
        if a not in b and b not in a:
            log.warning("--%s %s differs from the checkpoint's %s %s; using the checkpoint's",
                        field.replace("_", "-"), value, key.replace("_", " "), recorded)


def _dataset_source(s: CamSettings) -> Any:
    """The --dataset source, opened once per run: texts and images both read it (opening hashes the file)."""
    try:
        from xaiclip_cli.data.refs import open_source
    except ImportError as exc:
        raise XaiclipError("--dataset needs xaiclip_cli.data.refs, which is not installed") from exc
    return open_source(s.dataset, intensity=s.intensity)


def _texts(s: CamSettings, required: bool = True, source: Any = None) -> Any:
    from xaiclip_cli.explain.targets import load_texts_file

    if s.texts_file is not None:
        names, prompts = load_texts_file(s.texts_file)
        return dict(zip(names, prompts, strict=True))
    if s.text:
        return list(s.text)
    if required and s.dataset:
        return _dataset_texts(s.dataset, source if source is not None else _dataset_source(s))
    if required:
        raise UsageError("no texts: give --text (repeatable) or --texts-file FILE.json")
    return ["an image"]


def _dataset_texts(ref: str, source: Any) -> dict[str, str]:
    """--dataset without --text: one text per class, from the dataset's shipped prompt set when its labels are the
    dataset's classes (first label template), else ``a photo of a {class}`` (CLIP's zero-shot template)."""
    from xaiclip_cli.data.prompts import load_prompt_set

    names = [str(n) for n in (source.info().class_names or [])]
    if not names:
        raise UsageError(f"--dataset {ref} names no classes: give --text (repeatable) or --texts-file FILE.json")
    template = "a photo of a {}"
    try:
        prompts = load_prompt_set(ref.split(":", 1)[-1])
        if prompts.labels == names and prompts.label_templates:
            template = prompts.label_templates[0]
    except UsageError:  # no shipped prompt set of that name: the generic template
        pass
    return {n: template.format(n) for n in names}


def _expand_images(s: CamSettings) -> list[tuple[Path, Path]]:
    """(image file, output sub-folder) pairs; folders mirror their tree so that stems do not collide."""
    out: list[tuple[Path, Path]] = []
    for entry in s.images:
        text = str(entry)
        if any(c in text for c in "*?[") and not entry.exists():
            hits = sorted(Path(p) for p in glob.glob(text, recursive=s.recursive))
            files = [p for p in hits if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES]
            if not files:
                raise UsageError(f"--images {text}: the pattern matches no image files")
            out.extend((p, Path()) for p in files)
        elif entry.is_dir():
            pattern = "**/*" if s.recursive else "*"
            files = sorted(p for p in entry.glob(pattern) if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
            volumes = sorted(p for p in entry.glob(pattern) if p.is_file() and is_volume_name(p))
            if volumes:
                raise UsageError(f"--images {entry}: {volume_message(volumes[0])}")
            if not files:
                raise UsageError(f"--images {entry}: no image files in this folder (try --recursive)")
            out.extend((p, p.parent.relative_to(entry)) for p in files)
        elif entry.is_file():
            if is_volume_name(entry):
                raise UsageError(f"--images {volume_message(entry)}")
            out.append((entry, Path()))
        else:
            raise UsageError(f"--images {entry}: no such file or folder")
    return out


class _Item:
    """One image to explain: how to load it, where its outputs go, what the sidecar says about it."""

    def __init__(self, load: Any, subdir: Path, stem: str, source: dict[str, Any]) -> None:
        self.load, self.subdir, self.stem, self.source = load, subdir, stem, source


def _items(s: CamSettings, source: Any = None) -> list[_Item]:
    from xaiclip_cli.data.imageio import read_image

    if s.dataset:
        src = source if source is not None else _dataset_source(s)
        n = src.split_sizes().get(s.split, 0)
        if n == 0:
            raise UsageError(f"--dataset {s.dataset}: split {s.split!r} is empty")
        count = min(n, s.limit or n)
        items = []
        for i in range(count):
            info: dict[str, Any] = {"dataset": s.dataset, "split": s.split, "index": i}

            def load(i: int = i, info: dict[str, Any] = info) -> Any:
                sample = src.get(s.split, i)
                if sample.path:
                    info["path"] = sample.path
                if sample.intensity is not None:  # how a file's values became uint8 (sidecar `image` block)
                    info["intensity"] = sample.intensity
                return sample.image
            items.append(_Item(load, Path(s.split), f"{s.split}_{i:05d}", info))
        return items
    if not s.images:
        raise UsageError("no images: give --images PATH (files, folders or globs) or --dataset REF")
    pairs = _expand_images(s)
    if s.limit:
        pairs = pairs[: s.limit]
    items = []
    for p, sub in pairs:
        info = {"path": str(p)}

        def load(p: Path = p, info: dict[str, Any] = info) -> Any:
            image, info["intensity"] = read_image(p, s.intensity)  # recorded in the sidecar's `image` block
            return image
        items.append(_Item(load, sub, p.stem, info))
    return items


def _done(out_dir: Path, names: list[str] | None, stem: str, method: str) -> bool:
    if names is not None:
        return all((out_dir / f"{n}.json").is_file() for n in names)
    return any(out_dir.glob(f"{stem}_{method.replace('++', 'pp')}_*.json"))


# --- commands -----------------------------------------------------------------------------------------------------
def _planned(s: CamSettings, target: Any, names: list[str], item: _Item) -> list[str] | None:
    """Output names known before running (None for ``best``: the name depends on the winning text)."""
    from xaiclip_cli.explain.api import default_name, safe_name

    if target == "best":
        return [s.output_name] if s.output_name else None
    idxs = range(len(names)) if target == "all" else [int(target)]
    if s.output_name:
        return [s.output_name if target != "all" else f"{s.output_name}_{safe_name(names[j])}" for j in idxs]
    return [default_name(item.stem, s.method, names[j]) for j in idxs]


def _execute(s: CamSettings, todo: list[_Item], device: str, manifest: Path, advance: Any,
             warn: Any, texts: Any = None) -> dict[str, Any]:
    """Explain ``todo`` on ``device`` and write every output; returns counts, rows and the layer (one process)."""
    from xaiclip_cli.explain.api import CamRunner, default_name, safe_name, save_result
    from xaiclip_cli.explain.targets import normalise_texts, parse_target

    texts = _texts(s) if texts is None else texts
    names, _ = normalise_texts(texts)
    target = parse_target(s.target, names)
    backend = _load_backend(s.model_copy(update={"device": device, "cpu": s.cpu or device == "cpu"}))
    meta = {"backend": s.backend if s.checkpoint is None else "checkpoint",
            "model": str(s.checkpoint) if s.checkpoint else s.model, "seed": s.seed}
    with contextlib.suppress(Exception):  # provenance is informative only
        meta["provenance"] = backend.provenance()
    runner = CamRunner(backend, texts, s.method, target, s.target_layer, s.score, score_batch=s.score_batch,
                       topk=s.topk, unselected=s.gscore_unselected, normalise=s.normalise, meta=meta,
                       align=s.align,
                       legrad_layers=s.legrad_layers)
    out_root = s.output_dir
    rows: list[dict[str, Any]] = []
    failed = all_zero = n_maps = done = 0
    announced = False
    for start in range(0, len(todo), s.batch_size):
        chunk = todo[start:start + s.batch_size]
        loaded, arrays = [], []
        for it in chunk:
            try:
                arrays.append(it.load())
                loaded.append(it)
            except XaiclipError as exc:
                failed += 1
                warn(str(exc))
        if loaded:
            results = runner.run(arrays, [it.source for it in loaded], batch_size=s.batch_size)
            if not announced and runner.layer is not None:
                log.info("target layer (%s): %s %s %s", "given" if s.target_layer else "auto", runner.layer.name,
                         runner.layer.layout, list(runner.layer.shape))
                announced = True
            for r in results:
                it = loaded[r.image_index]
                if s.output_name:
                    name = s.output_name if target != "all" else f"{s.output_name}_{safe_name(r.target_name)}"
                else:
                    name = default_name(it.stem, s.method, r.target_name)
                files = save_result(r, out_root / it.subdir, name, figure=s.figure, raw=s.raw, colormap=s.colormap,
                                    alpha=s.alpha, manifest=manifest)
                n_maps += 1
                if r.all_zero:
                    all_zero += 1
                    warn(f"{name}: the map is all zero after ReLU (text unrelated to the image, or a wrong layer); "
                         "the raw map is still saved")
                rows.append({"image": r.source.get("path") or it.stem, "target": r.target_name,
                             "score": round(r.target_score, 6), "all_zero": r.all_zero,
                             "file": str(Path(it.subdir) / files["sidecar"])})
            done += len(loaded)
        advance(len(chunk))
    layer = runner.layer
    return {"images": done, "maps": n_maps, "failed": failed, "all_zero": all_zero, "rows": rows,
            "layer": layer.as_dict() if layer else None, "backend": meta["backend"], "model": meta["model"]}


def cam_worker(payload: dict[str, Any], rank: int, world: int, device: str, advance: Any) -> dict[str, Any]:
    """One `--gpus` worker: rebuild the settings, take todo items ``rank::world``, write a rank manifest part."""
    s = CamSettings.model_validate(payload["settings"])
    items = _items(s)
    todo = [items[i] for i in payload["todo"]][rank::world]
    part = s.output_dir / f".manifest.rank{rank}.jsonl"
    return _execute(s, todo, device, part, advance, lambda m: log.warning(m))


@settings_command(app, CamSettings, name="run")
def run(s: CamSettings, ctx: RunContext) -> CamRunResult:
    """Draw heatmaps of image-text alignment for images, folders, globs or a dataset, in batches.

    Each image gets <name>.png (original, heatmap, overlay, probabilities), <name>_overlay.png, <name>.npz (raw map
    before ReLU and the upsampled map) and <name>.json, plus a line in manifest.jsonl. Images whose sidecar exists
    are skipped (resume); --overwrite recomputes them. --gpus 0,1 runs one worker per GPU; under torchrun/SLURM each
    rank takes every world-th image and writes manifest.rank<R>.jsonl. Example:
    xaiclip cam run --images cells/ --text "a neutrophil" --text "a lymphocyte" --method gradcam
    """
    from xaiclip_cli.config.base import save_config
    from xaiclip_cli.explain.targets import normalise_texts, parse_target
    from xaiclip_cli.parallel.ranks import rank_from_env
    from xaiclip_cli.viz.colormap import colormap_names

    source = _dataset_source(s) if s.dataset else None
    texts = _texts(s, source=source)
    items = _items(s, source)
    if s.output_name and len(items) > 1:
        raise UsageError(f"--output-name is only for a single image ({len(items)} images given); drop it to get "
                         "<stem>_<method>_<target> names")
    names, _ = normalise_texts(texts)
    target = parse_target(s.target, names)
    if s.colormap not in colormap_names():
        raise UsageError(f"--colormap {s.colormap!r} is not a matplotlib colormap (e.g. jet, viridis, inferno)")
    out_root = s.output_dir
    todo_idx = [i for i, it in enumerate(items)
                if s.overwrite or not _done(out_root / it.subdir, _planned(s, target, names, it), it.stem, s.method)]
    skipped = len(items) - len(todo_idx)
    if skipped:
        log.info("skipping %d image(s) with existing sidecars (use --overwrite to recompute)", skipped)
    env_rank = rank_from_env()
    if env_rank.distributed:
        todo_idx = todo_idx[env_rank.rank::env_rank.world]
    out_root.mkdir(parents=True, exist_ok=True)
    if env_rank.rank == 0:
        save_config(s, out_root)
    manifest = out_root / ("manifest.jsonl" if not env_rank.distributed else f"manifest.rank{env_rank.rank}.jsonl")
    t0 = time.perf_counter()
    with ctx.progress(len(todo_idx), "cam run", unit="images") as advance:
        if len(s.gpus) > 1 and not env_rank.distributed:
            stats = _run_workers(s, todo_idx, manifest, advance, ctx)
        else:
            device = f"cuda:{s.gpus[0]}" if len(s.gpus) == 1 and not s.cpu else _device(s)
            stats = _execute(s, [items[i] for i in todo_idx], device, manifest, advance, ctx.warn, texts)
    seconds = time.perf_counter() - t0
    if stats["failed"]:
        ctx.exit_code = 3
    layer = stats["layer"] or {}
    n_img = stats["images"]
    return CamRunResult(
        output_dir=str(out_root), backend=stats["backend"], model=stats["model"], method=s.method, score=s.score,
        layer=layer.get("name"), layer_shape=layer.get("shape", []), layout=layer.get("layout"), images=n_img,
        maps=stats["maps"], skipped=skipped, failed=stats["failed"], all_zero=stats["all_zero"],
        seconds=round(seconds, 3), images_per_s=round(n_img / seconds, 3) if seconds > 0 and n_img else 0.0,
        manifest=str(manifest) if stats["maps"] else None, rows=stats["rows"],
    )


def _run_workers(s: CamSettings, todo_idx: list[int], manifest: Path, advance: Any, ctx: RunContext) -> dict[str, Any]:
    """One process per --gpus entry; rank manifest parts are appended to the manifest in rank order."""
    from xaiclip_cli.parallel.spawn import spawn_workers

    device = "cpu" if s.cpu or s.device == "cpu" else "cuda"
    outcomes = spawn_workers("xaiclip_cli.cli.cam:cam_worker",
                             {"settings": s.model_dump(mode="json"), "todo": todo_idx}, s.gpus, device, advance)
    stats: dict[str, Any] = {"images": 0, "maps": 0, "failed": 0, "all_zero": 0, "rows": [], "layer": None,
                             "backend": s.backend, "model": s.model}
    with open(manifest, "a", encoding="utf-8") as out:
        for o in outcomes:
            part = s.output_dir / f".manifest.rank{o.rank}.jsonl"
            if part.is_file():
                out.write(part.read_text(encoding="utf-8"))
                part.unlink()
            if o.exit_code != 0 or o.result is None:
                ctx.warn(f"worker {o.rank} (gpu {o.gpu}) failed: {o.error}; rerun to resume its images")
                stats["failed"] += len(todo_idx[o.rank::len(s.gpus)])
                continue
            for k in ("images", "maps", "failed", "all_zero"):
                stats[k] += o.result[k]
            stats["rows"].extend(o.result["rows"])
            stats["layer"] = stats["layer"] or o.result["layer"]
            stats["backend"], stats["model"] = o.result["backend"], o.result["model"]
    return stats


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

    texts = _texts(s, required=False)
    if s.images or s.dataset:
        image = _items(s)[0].load()
    else:
        image = None
    backend = _load_backend(s)
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
