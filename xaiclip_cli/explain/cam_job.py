"""The `cam run` job as a library: model and texts from CamSettings, input items, batched execution, resume, workers.

The CLI (`xaiclip_cli/cli/cam.py`) only turns settings into :func:`run_cam` and its statistics into a result
model; planning, sharding, worker dispatch and failure collection go through ``parallel/runner.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xaiclip_cli.config.cam import CamSettings
from xaiclip_cli.data.items import InputItem, dataset_items, image_items
from xaiclip_cli.errors import UsageError, XaiclipError

log = logging.getLogger("xaiclip.cam")

# Fields that change how a run executes, not what it computes: a rerun differing only in these is a resume.
EXECUTION_FIELDS = frozenset({"overwrite", "log_level", "threads", "gpus", "device", "cpu", "limit", "batch_size",
                              "score_batch"})


def device_of(s: CamSettings) -> str:
    """The device a run computes on (--cpu wins over --device)."""
    return "cpu" if s.cpu else s.device


def load_cam_backend(s: CamSettings) -> Any:
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
    backend = load_backend(name, model, revision=s.revision, device=device_of(s),
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


def dataset_source(s: CamSettings) -> Any:
    """The --dataset source, opened once per run: texts and images both read it (opening hashes the file)."""
    try:
        from xaiclip_cli.data.refs import open_source
    except ImportError as exc:
        raise XaiclipError("--dataset needs xaiclip_cli.data.refs, which is not installed") from exc
    return open_source(s.dataset, intensity=s.intensity)


def cam_texts(s: CamSettings, required: bool = True, source: Any = None) -> Any:
    from xaiclip_cli.explain.targets import load_texts_file

    if s.texts_file is not None:
        names, prompts = load_texts_file(s.texts_file)
        return dict(zip(names, prompts, strict=True))
    if s.text:
        return list(s.text)
    if required and s.dataset:
        return _dataset_texts(s.dataset, source if source is not None else dataset_source(s))
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




DEFAULT_LIMIT = 4  # `cam run` with no inputs: this many toy cells (seconds on a CPU)


def default_inputs(s: CamSettings) -> CamSettings:
    """With neither --images nor --dataset: the embedded toy cells test split (one text per class unless given)."""
    if s.images or s.dataset:
        return s
    log.info("no --images/--dataset: explaining %d toy cells of the embedded default (--dataset toycells)",
             s.limit or DEFAULT_LIMIT)
    return s.model_copy(update={"dataset": "toycells", "limit": s.limit or DEFAULT_LIMIT})


def cam_items(s: CamSettings, source: Any = None) -> list[InputItem]:
    """The run's input items: --dataset (named after its files when it has files) or --images files/folders/globs."""
    if s.dataset:
        return dataset_items(source if source is not None else dataset_source(s), s.dataset, s.split, s.limit)
    if not s.images:
        raise UsageError("no images: give --images PATH (files, folders or globs) or --dataset REF")
    return image_items(s.images, s.recursive, s.limit, intensity=s.intensity)


def _done(out_dir: Path, names: list[str] | None, stem: str, method: str) -> bool:
    if names is not None:
        return all((out_dir / f"{n}.json").is_file() for n in names)
    return any(out_dir.glob(f"{stem}_{method.replace('++', 'pp')}_*.json"))


def _planned(s: CamSettings, target: Any, names: list[str], item: InputItem) -> list[str] | None:
    """Output names known before running (None for ``best``: the name depends on the winning text)."""
    from xaiclip_cli.explain.api import default_name, safe_name

    if target == "best":
        return [s.output_name] if s.output_name else None
    idxs = range(len(names)) if target == "all" else [int(target)]
    if s.output_name:
        return [s.output_name if target != "all" else f"{s.output_name}_{safe_name(names[j])}" for j in idxs]
    return [default_name(item.stem, s.method, names[j]) for j in idxs]


def execute_cam(s: CamSettings, todo: list[InputItem], device: str, manifest: Path, advance: Any,
                warn: Any, texts: Any = None, indices: list[int] | None = None) -> dict[str, Any]:
    """Explain ``todo`` on ``device`` and write every output; returns counts, rows, failures and the layer."""
    from xaiclip_cli.explain.api import CamRunner, default_name, safe_name, save_result
    from xaiclip_cli.explain.targets import normalise_texts, parse_target

    texts = cam_texts(s) if texts is None else texts
    indices = list(range(len(todo))) if indices is None else indices
    names, _ = normalise_texts(texts)
    target = parse_target(s.target, names)
    backend = load_cam_backend(s.model_copy(update={"device": device, "cpu": s.cpu or device == "cpu"}))
    meta = {"backend": s.backend if s.checkpoint is None else "checkpoint",
            "model": str(s.checkpoint) if s.checkpoint else s.model, "seed": s.seed}
    with contextlib.suppress(Exception):  # provenance is informative only
        meta["provenance"] = backend.provenance()
    runner = CamRunner(backend, texts, s.method, target, s.target_layer, s.score, score_batch=s.score_batch,
                       topk=s.topk, unselected=s.gscore_unselected, normalise=s.normalise, meta=meta,
                       align=s.align, legrad_layers=s.legrad_layers)
    out_root = s.output_dir
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    all_zero = n_maps = done = 0
    announced = False
    for start in range(0, len(todo), s.batch_size):
        chunk = todo[start:start + s.batch_size]
        loaded, arrays = [], []
        for j, it in enumerate(chunk):
            try:
                arrays.append(it.load())
                loaded.append(it)
            except XaiclipError as exc:
                failures.append({"index": indices[start + j], "error": str(exc), **it.source})
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
    return {"images": done, "done": done, "maps": n_maps, "failed": len(failures), "failures": failures,
            "all_zero": all_zero, "rows": rows, "layer": layer.as_dict() if layer else None,
            "backend": meta["backend"], "model": meta["model"]}


def cam_worker(payload: dict[str, Any], rank: int, world: int, device: str, advance: Any) -> dict[str, Any]:
    """One worker: rebuild the settings, take todo items ``rank::world``, write a rank manifest part."""
    todo = list(payload["todo"])[rank::world]
    return cam_share(payload, todo, device, advance, part=rank)


def cam_share(payload: dict[str, Any], indices: list[int], device: str, advance: Any,
              part: int | None = None) -> dict[str, Any]:
    """Runner worker target: explain the items at ``indices`` (rebuilt from the settings in ``payload``)."""
    s = CamSettings.model_validate(payload["settings"])
    items = cam_items(s)
    if part is None:
        import os

        part = int(os.environ.get("XAICLIP_WORKER_RANK", "0"))
    manifest = s.output_dir / f".manifest.rank{part}.jsonl"
    return execute_cam(s, [items[i] for i in indices], device, manifest, advance, lambda m: log.warning(m),
                       indices=indices)


def config_identity(s: CamSettings) -> dict[str, Any]:
    """The settings that define what a run computes (execution-only fields dropped), JSON-able."""
    return {k: v for k, v in s.model_dump(mode="json").items() if k not in EXECUTION_FIELDS}


def config_file_for(s: CamSettings, out_root: Path) -> Path:
    """Where this run's resolved settings go: config.yaml when absent or of the same run (a resume), else
    config-<hash8>.yaml (one name per distinct configuration), so no run's record replaces another's."""
    import yaml

    mine = config_identity(s)
    first = out_root / "config.yaml"
    if s.overwrite or not first.is_file():
        return first
    try:
        saved = (yaml.safe_load(first.read_text(encoding="utf-8")) or {}).get("cam", {})
    except (OSError, yaml.YAMLError, AttributeError):
        saved = None
    if isinstance(saved, dict) and {k: v for k, v in saved.items() if k not in EXECUTION_FIELDS} == mine:
        return first
    digest = hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()[:8]
    return out_root / f"config-{digest}.yaml"


def run_cam(s: CamSettings, progress: Callable[..., Any], warn: Callable[[str], None]) -> dict[str, Any]:
    """Plan, shard and run `cam run`; returns the merged statistics plus planning counts and the manifest path.

    ``progress(total, description, unit=...)`` is a context manager yielding ``advance(n)`` (RunContext.progress).
    """
    import time

    from xaiclip_cli.config.base import save_config
    from xaiclip_cli.explain.targets import normalise_texts, parse_target
    from xaiclip_cli.parallel.ranks import rank_from_env
    from xaiclip_cli.parallel.runner import JobSpec, run_job, worker_indices
    from xaiclip_cli.viz.colormap import colormap_names

    s = default_inputs(s)
    source = dataset_source(s) if s.dataset else None
    texts = cam_texts(s, source=source)
    items = cam_items(s, source)
    if s.output_name and len(items) > 1:
        raise UsageError(f"--output-name is only for a single image ({len(items)} images given); drop it to get "
                         "<stem>_<method>_<target> names")
    names, _ = normalise_texts(texts)
    target = parse_target(s.target, names)
    if s.colormap not in colormap_names():
        raise UsageError(f"--colormap {s.colormap!r} is not a matplotlib colormap (e.g. jet, viridis, inferno)")
    out_root = s.output_dir
    env_rank = rank_from_env()
    spawned = len(s.gpus) > 1 and not env_rank.distributed
    manifest = out_root / ("manifest.jsonl" if not env_rank.distributed else f"manifest.rank{env_rank.rank}.jsonl")

    def is_done(i: int) -> bool:
        it = items[i]
        return _done(out_root / it.subdir, _planned(s, target, names, it), it.stem, s.method)

    def local(indices: list[int], device: str, advance: Any) -> dict[str, Any]:
        return execute_cam(s, [items[i] for i in indices], device, manifest, advance, warn, texts, indices)

    def plan_hook(todo: list[int], rank: Any) -> None:
        out_root.mkdir(parents=True, exist_ok=True)
        if rank.rank == 0:
            target_file = config_file_for(s, out_root)
            if target_file.name != "config.yaml":
                log.info("config.yaml in %s holds another run's settings; this run's are in %s", out_root,
                         target_file.name)
            save_config(s, out_root, target_file.name)

    todo_all = [i for i in range(len(items)) if s.overwrite or not is_done(i)]
    skipped = len(items) - len(todo_all)
    if skipped:
        log.info("skipping %d image(s) with existing sidecars (use --overwrite to recompute)", skipped)
    n_mine = len(todo_all) if spawned or not env_rank.distributed else \
        len(worker_indices(len(items), todo_all, env_rank.rank, env_rank.world, "strided"))
    spec = JobSpec("cam run", len(items), is_done, local, worker_target="xaiclip_cli.explain.cam_job:cam_share",
                   payload={"settings": s.model_dump(mode="json")}, sharding="strided", overwrite=s.overwrite)
    device = device_of(s)
    t0 = time.perf_counter()
    with progress(n_mine, "cam run", unit="images") as advance:
        report = run_job(spec, gpus=s.gpus if not env_rank.distributed else (), device=device,
                         advance=advance, plan_hook=plan_hook)
    if spawned:
        _collect_manifest_parts(s, manifest, len(s.gpus))
        for o in report.outcomes:
            if o.exit_code != 0 or o.result is None:
                warn(f"worker {o.rank} (gpu {o.gpu}) failed: {o.error}; rerun to resume its images")
    stats = report.stats
    stats.update(failed=report.failed, failures=report.failures, skipped=report.skipped,
                 seconds=time.perf_counter() - t0, manifest=str(manifest) if stats.get("maps") else None,
                 exit_code=report.exit_code)
    stats.setdefault("backend", s.backend if s.checkpoint is None else "checkpoint")
    stats.setdefault("model", str(s.checkpoint) if s.checkpoint else s.model)
    for k in ("images", "maps", "all_zero"):
        stats[k] = int(stats.get(k) or 0)
    stats["rows"] = stats.get("rows") or []
    return stats


def _collect_manifest_parts(s: CamSettings, manifest: Path, workers: int) -> None:
    """Append the workers' manifest parts to the manifest in rank order and remove them."""
    with open(manifest, "a", encoding="utf-8") as out:
        for rank in range(workers):
            part = s.output_dir / f".manifest.rank{rank}.jsonl"
            if part.is_file():
                out.write(part.read_text(encoding="utf-8"))
                part.unlink()
