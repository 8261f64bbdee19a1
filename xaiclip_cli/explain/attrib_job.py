"""The `attrib run` job as a library: entries (images, eval lists, datasets), class set, scorer, per-item SMDL, resume.

Layout of a run folder (smdl.md §8–9)::

    OUT/run.json                          resolved config + identity (model, weights hash, inputs hash) + plan
    OUT/items/<target>/<rel-stem>.npz     compact result (explain/smdl/results.py::save_npz)
    OUT/items/<target>/<rel-stem>.json    sidecar (path, target, prediction, forwards, seconds, regions)
    OUT/items/<target>/<rel-stem>.done    empty marker, written last (resume skips items that have it)
    OUT/shards/worker-w-of-W.json         per-worker counts;  OUT/failed.jsonl  per-image failures

``<target>`` is the target class's folder name (``pred`` when the target is the predicted class). Planning,
sharding (blocks of the planned entries), workers and failures go through ``parallel/runner.py``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xaiclip_cli.config.attrib import DEFAULT_LIMIT, EXECUTION_FIELDS, AttribSettings
from xaiclip_cli.errors import UsageError, XaiclipError

log = logging.getLogger("xaiclip.attrib")
RUN_VERSION = 1
PRED = "pred"


# --- entries ------------------------------------------------------------------------------------------------------
@dataclass
class Entry:
    """One planned item: where its pixels come from, its output key (``rel_stem``) and its target spec."""

    rel_stem: str
    target: str  # a class index or name, "label" (resolved at planning) or "pred"
    path: str | None = None  # an image file (read with cv2.imdecode)
    dataset_index: int | None = None  # or a dataset position (split of the settings)
    source: dict[str, Any] = field(default_factory=dict)


def folder_name(name: str) -> str:
    """A class name as a folder name: runs of characters other than letters, digits, ``.-`` become ``_``."""
    out = re.sub(r"[^\w.\-]+", "_", str(name).strip()).strip("_")
    return out or "_"


def _hash_lines(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def default_inputs(s: AttribSettings) -> AttribSettings:
    """With no inputs at all: the embedded toy cells test split, a few images (`attrib run` with no arguments)."""
    if s.images or s.list_file or s.dataset:
        return s
    return s.model_copy(update={"dataset": "toycells", "limit": s.limit or DEFAULT_LIMIT})


def _dataset_labels(source: Any, split: str, count: int) -> list[int]:
    """Labels of the first ``count`` samples without decoding images where the source allows it."""
    items = getattr(source, "_items", None)
    if isinstance(items, dict) and split in items:
        return [int(lbl) for _, lbl in items[split][:count]]
    if hasattr(source, "rows") and hasattr(source, "csv_path"):
        return [int(r.label) for r in source.rows(split)[:count]]
    return [int(source.get(split, i).label) for i in range(count)]


def build_entries(s: AttribSettings, source: Any = None) -> tuple[list[Entry], str]:
    """The planned entries in order and a hash of the whole input list (before --begin/--end/--limit)."""
    from xaiclip_cli.data.evallist import read_eval_list, select_range
    from xaiclip_cli.data.items import dataset_items, expand_images, unique_stems

    default_target = "label" if (s.list_file or s.dataset) else PRED
    target = s.target if s.target is not None else default_target
    if s.list_file is not None:
        entries, digest = read_eval_list(s.list_file)
        chosen = select_range(entries, s.begin, s.end)
        if s.limit:
            chosen = chosen[: s.limit]
        root = s.image_root if s.image_root is not None else s.list_file.parent
        out = []
        missing = []
        for e in chosen:
            p = Path(e.path)
            full = p if p.is_absolute() else root / p
            if not full.is_file():
                missing.append(f"{e.path} (line {e.line})")
                continue
            rel = Path(e.path).with_suffix("")
            rel_stem = rel.name if rel.is_absolute() else rel.as_posix()
            out.append(Entry(rel_stem, e.target if target == "label" else target, str(full), None,
                             {"path": str(full), "list": str(s.list_file), "entry": e.index, "line": e.line}))
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise UsageError(f"--list {s.list_file}: image not found: {missing[0]}{more} (under {root}; "
                             "see --image-root)")
        return out, digest
    if s.begin or s.end is not None:
        raise UsageError("--begin/--end select --list entries; use --limit with --images/--dataset")
    if s.dataset:
        from xaiclip_cli.data.refs import open_source

        src = source if source is not None else open_source(s.dataset, intensity=s.intensity)
        n = src.split_sizes().get(s.split, 0)
        if n == 0:
            raise UsageError(f"--dataset {s.dataset}: split {s.split!r} is empty")
        items = dataset_items(src, s.dataset, s.split, s.limit)
        labels = _dataset_labels(src, s.split, len(items)) if target == "label" else [None] * len(items)
        out = []
        for i, it in enumerate(items):
            t = target
            src_rec = dict(it.source)
            if target == "label":
                if labels[i] is None or labels[i] < 0:
                    raise UsageError(f"--dataset {s.dataset}: sample {i} has no single class label; give --target")
                t = f"#{labels[i]}"  # a dataset class index, mapped to the class set by name at resolution
                src_rec["label"] = int(labels[i])
            out.append(Entry(it.rel_stem, t, it.source.get("path"), i, src_rec))  # files: read with cv2
        return out, _hash_lines([s.dataset, s.split, str(n)])
    pairs = expand_images(s.images, s.recursive, "--images")
    digest = _hash_lines([str(p) for p, _ in pairs])
    if s.limit:
        pairs = pairs[: s.limit]
    stems = unique_stems(pairs)
    out = [Entry((sub / stem).as_posix(), target, str(p), None, {"path": str(p)})
           for (p, sub), stem in zip(pairs, stems, strict=True)]
    return out, digest


def _drop_duplicates(entries: list[Entry], targets: list[int | str], names: list[str]
                     ) -> tuple[list[Entry], list[int | str]]:
    """Entries that would write the same item (same target, same rel-stem) run once, with a warning."""
    seen: dict[tuple[str, str], int] = {}
    keep_e, keep_t = [], []
    for i, (e, t) in enumerate(zip(entries, targets, strict=True)):
        key = (str(t), e.rel_stem)
        if key in seen:
            what = PRED if t == PRED else names[int(t)]
            log.warning("entry %d writes the same item as entry %d (%s, target %s): it runs once", i, seen[key],
                        e.rel_stem, what)
            continue
        seen[key] = i
        keep_e.append(e)
        keep_t.append(t)
    return keep_e, keep_t


# --- class set ----------------------------------------------------------------------------------------------------
@dataclass
class ClassSet:
    """Class names, how their features are made (prompts per class, a features file or a store template)."""

    names: list[str]
    prompts: list[list[str]] | None = None
    features: np.ndarray | None = None  # [C,d] unit rows (files and stores)
    origin: str = ""

    def identity(self) -> dict[str, Any]:
        """What run.json records and compares."""
        doc: dict[str, Any] = {"names": self.names, "origin": self.origin}
        if self.prompts is not None:
            doc["prompts"] = self.prompts
        if self.features is not None:
            doc["features_sha256"] = hashlib.sha256(np.ascontiguousarray(self.features, np.float32)).hexdigest()
        return doc


def _dataset_class_prompts(ref: str, names: list[str], templates: list[str]) -> list[list[str]]:
    from xaiclip_cli.data.prompts import load_prompt_set

    if templates:
        return [[t.format(n) for t in templates] for n in names]
    template = "a photo of a {}"
    try:
        ps = load_prompt_set(ref.split(":", 1)[-1])
        if ps.labels == names and ps.label_templates:
            template = ps.label_templates[0]
    except UsageError:
        pass
    return [[template.format(n)] for n in names]


def _check_templates(templates: list[str]) -> None:
    for t in templates:
        if "{}" not in t:
            raise UsageError(f"--templates {t!r} has no {{}} for the class name")


def build_classes(s: AttribSettings, classifier_meta: dict[str, Any] | None = None, source: Any = None) -> ClassSet:
    """The class set from --classifier, --text, --text-features, --h5/--template, --classes, or the dataset."""
    _check_templates(s.templates)
    if classifier_meta is not None:
        names = [str(n) for n in classifier_meta.get("class_names") or []] or \
            [str(i) for i in range(int(classifier_meta["num_classes"]))]
        cs = ClassSet(names, origin=f"classifier:{s.classifier}")
    elif s.text:
        cs = ClassSet(list(s.text), [[t] for t in s.text], origin="text")
    elif s.text_features is not None:
        p = s.text_features
        if not p.is_file():
            raise UsageError(f"--text-features {p}: no such file")
        try:
            feats = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--text-features {p}: not a readable .npy ({exc})") from None
        if feats.ndim != 2 or not np.isfinite(feats).all():
            raise UsageError(f"--text-features {p}: expected finite [C,d] features, got shape {feats.shape}")
        norms = np.linalg.norm(feats, axis=1)
        if np.abs(norms - 1).max() > 1e-3:
            raise UsageError(f"--text-features {p}: rows must be unit vectors (norms {norms.min():.3g}.."
                             f"{norms.max():.3g}); the logit scale is --logit-scale, never baked in")
        names = list(s.classes) or [str(i) for i in range(feats.shape[0])]
        if len(names) != feats.shape[0]:
            raise UsageError(f"--classes gives {len(names)} names but --text-features has {feats.shape[0]} rows")
        cs = ClassSet(names, features=feats.astype(np.float32), origin=f"text_features:{p}")
    elif s.h5 is not None:
        cs = _store_classes(s)
    elif s.classes:
        cs = ClassSet(list(s.classes), [[t.format(c) for t in (s.templates or ["a photo of a {}"])]
                                        for c in s.classes], origin="classes")
    elif s.dataset:
        from xaiclip_cli.data.refs import open_source

        src = source if source is not None else open_source(s.dataset, intensity=s.intensity)
        names = [str(n) for n in (src.info().class_names or [])]
        if not names:
            raise UsageError(f"--dataset {s.dataset} names no classes: give --classes or --text")
        cs = ClassSet(names, _dataset_class_prompts(s.dataset, names, s.templates), origin=f"dataset:{s.dataset}")
    else:
        raise UsageError("no classes: give --text (repeatable), --classes with --templates, --text-features F.npy, "
                         "--h5 LIB --template NAME or --classifier RUN")
    if len(cs.names) < 2:
        raise UsageError(f"SMDL needs at least 2 classes (got {len(cs.names)}: {cs.names}); the confidence and "
                         "softmax terms are undefined for one")
    if len(set(cs.names)) != len(cs.names):
        dup = next(n for n in cs.names if cs.names.count(n) > 1)
        raise UsageError(f"class {dup!r} is given twice")
    return cs


def _store_classes(s: AttribSettings) -> ClassSet:
    from xaiclip_cli.store.reader import StoreReader, attr_json

    if not s.h5.exists():  # type: ignore[union-attr]
        raise UsageError(f"--h5 {s.h5}: no such file")
    with StoreReader(s.h5, check_sources=False) as r:  # type: ignore[arg-type]
        feats = r.fetch([s.template])[s.template]  # type: ignore[list-item]
        kind = "concept" if str(s.template).startswith("concept") else "label"
        names = attr_json(r.file.attrs, f"{kind}_texts") or []
    feats = np.asarray(feats, np.float32)
    if feats.ndim != 2:
        raise UsageError(f"--template {s.template}: features have shape {feats.shape}, expected [C,d]")
    names = [str(n) for n in names] if len(names) == feats.shape[0] else [str(i) for i in range(feats.shape[0])]
    if s.classes:
        if len(s.classes) != feats.shape[0]:
            raise UsageError(f"--classes gives {len(s.classes)} names but --template {s.template} has "
                             f"{feats.shape[0]} rows")
        names = list(s.classes)
    feats = feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12)
    return ClassSet(names, features=feats, origin=f"h5:{s.h5}#{s.template}")


def resolve_target(spec: str, names: list[str], dataset_names: list[str] | None = None) -> int | str:
    """A target spec → class index, or ``pred``. Accepts an index, a class name, ``#i`` (dataset class i)."""
    if spec == PRED:
        return PRED
    if spec.startswith("#") and dataset_names is not None:
        name = dataset_names[int(spec[1:])]
        if name not in names:
            raise UsageError(f"dataset class {name!r} is not one of the classes {names}; give --classes or --target")
        return names.index(name)
    if spec.lstrip("-").isdigit():
        i = int(spec)
        if not 0 <= i < len(names):
            raise UsageError(f"target {spec}: class index outside 0..{len(names) - 1}")
        return i
    if spec in names:
        return names.index(spec)
    raise UsageError(f"unknown class {spec!r} (known: {', '.join(names[:10])}{', ...' if len(names) > 10 else ''})")


# --- model state (built once per process) -------------------------------------------------------------------------
@dataclass
class ModelState:
    """A scorer with its preprocessing, input size, score family, logit scale and model record."""

    scorer: Any
    preprocess: Any
    size: int
    family: str
    logit_scale: float | None
    model: dict[str, Any]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def classifier_checkpoint(path: Path) -> Path:
    """The checkpoint of a `train fit` run folder (checkpoints/best.pt, else last.pt) or the file itself."""
    if path.is_file():
        return path
    for name in ("best.pt", "last.pt"):
        if (path / "checkpoints" / name).is_file():
            return path / "checkpoints" / name
    raise UsageError(f"--classifier {path}: not a `xaiclip train fit` run folder (no checkpoints/best.pt) "
                     "or checkpoint file")


def classifier_meta(s: AttribSettings) -> dict[str, Any] | None:
    """The checkpoint metadata of --classifier (None without it)."""
    if s.classifier is None:
        return None
    from xaiclip_cli.train.model import load_checkpoint

    ck = load_checkpoint(classifier_checkpoint(s.classifier))
    meta = ck.get("meta")
    if not meta:
        raise XaiclipError(f"--classifier {s.classifier}: the checkpoint has no 'meta' block (not from train fit)")
    return dict(meta)


def _classifier_preprocess(meta: dict[str, Any]) -> Callable[[np.ndarray], Any]:
    """RGB uint8 [S,S,3] → normalised [1,C,S,S] with the checkpoint's mean/std (grey models take channel mean)."""
    import torch

    mean = torch.tensor(meta["mean"], dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(meta["std"], dtype=torch.float32).view(-1, 1, 1)
    chans = int(meta["in_chans"])

    def pre(rgb: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0
        if chans == 1:
            x = x.mean(0, keepdim=True)
        return ((x - mean[:chans]) / std[:chans])[None]

    return pre


def load_model_state(s: AttribSettings, classes: ClassSet, device: str) -> ModelState:
    """Load the backend or classifier on ``device`` and build the scorer for the class set."""
    import torch

    from xaiclip_cli.explain.smdl import ClassifierScorer, ClipScorer, text_prototypes

    torch.manual_seed(s.seed)
    if s.threads:
        torch.set_num_threads(s.threads)
    dev = "cpu" if device in ("auto", "cpu") and not torch.cuda.is_available() else device
    if dev == "auto":
        dev = "cuda"
    if s.classifier is not None:
        from xaiclip_cli.train.model import model_from_checkpoint

        ckpt = classifier_checkpoint(s.classifier)
        model, meta = model_from_checkpoint(ckpt)
        model = model.to(dev)
        scorer = ClassifierScorer(model, amp=s.amp)
        return ModelState(scorer, _classifier_preprocess(meta), int(meta["image_size"]), "softmax", None,
                          {"kind": "classifier", "checkpoint": str(ckpt), "arch": meta.get("arch"),
                           "weights_sha256": _file_sha256(ckpt)})
    from xaiclip_cli.models.registry import load_backend

    backend = load_backend(s.backend, s.model, revision=s.revision, device=dev,
                           trust_remote_code=s.trust_remote_code)
    if classes.features is not None:
        feats = torch.from_numpy(classes.features)
    else:
        feats = text_prototypes(backend, classes.prompts or [])
    if feats.shape[1] != backend.embed_dim:
        raise UsageError(f"class features have {feats.shape[1]} dims but the model embeds to {backend.embed_dim}")
    family = s.score or backend.score_family
    scale = float(s.logit_scale) if s.logit_scale is not None else float(backend.logit_scale)
    bias = float(backend.logit_bias) if family == "sigmoid" else 0.0
    scorer = ClipScorer(backend, feats.to(dev), scale, family=family, logit_bias=bias, amp=s.amp)
    try:
        prov = backend.provenance()
    except Exception:  # noqa: BLE001 - provenance is informative only
        prov = {}
    return ModelState(scorer, backend, int(backend.image_size), family, scale,
                      {"kind": "clip", "backend": s.backend, "model": s.model or getattr(backend, "name", None),
                       "weights_sha256": prov.get("sha256") or prov.get("model_revision"), "provenance": prov})


# --- one item -----------------------------------------------------------------------------------------------------
def item_paths(out: Path, target_folder: str, rel_stem: str) -> dict[str, Path]:
    """npz, sidecar and done-marker paths of one item."""
    base = out / "items" / target_folder / rel_stem
    return {"npz": base.with_name(base.name + ".npz"), "json": base.with_name(base.name + ".json"),
            "done": base.with_name(base.name + ".done")}


def prior_path(prior_dir: Path, target_folder: str, rel_stem: str) -> Path | None:
    """The prior map of an item: <dir>/<target>/<rel-stem>.npy (attrib baseline layout), else <dir>/<rel-stem>.npy."""
    for p in (prior_dir / target_folder / f"{rel_stem}.npy", prior_dir / f"{rel_stem}.npy"):
        if p.is_file():
            return p
    return None


def division_kwargs(s: AttribSettings, size: int, target_folder: str, rel_stem: str) -> dict[str, Any]:
    """The keywords of ``divide`` for one item (maps and masks read from their folders)."""
    from xaiclip_cli.explain.smdl import auto_region_size

    d: dict[str, Any] = {"mode": s.division}
    if s.division == "slico":
        d["region_size"] = auto_region_size(size) if s.region_size == "auto" else int(s.region_size)
    elif s.division == "grid":
        d["grid"] = s.grid
    elif s.division == "prior-patch":
        p = prior_path(s.prior, target_folder, rel_stem)  # type: ignore[arg-type]
        if p is None:
            raise UsageError(f"--prior {s.prior}: no map for {target_folder}/{rel_stem}.npy")
        d.update(prior=np.load(p, allow_pickle=False), prior_grid=s.prior_grid, cells_per_region=s.cells_per_region)
    elif s.division == "sam":
        p = s.sam_masks / f"{rel_stem}.npz"  # type: ignore[operator]
        if not p.is_file():
            raise UsageError(f"--sam-masks {s.sam_masks}: no {rel_stem}.npz")
        try:
            with np.load(p, allow_pickle=False) as z:
                d["sam_masks"] = z["masks"].astype(bool)
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"--sam-masks {p}: cannot read bool masks[M,H,W] ({exc})") from None
    return d


def smdl_config(s: AttribSettings) -> Any:
    """The library search config of the settings."""
    from xaiclip_cli.explain.smdl import SmdlConfig

    return SmdlConfig(lambdas=tuple(s.lambdas), search=s.search, lazy=s.lazy, k=s.k, pending=s.pending,
                      lazy_batch=s.lazy_batch, lazy_refresh=s.lazy_refresh, lazy_stale=s.lazy_stale,
                      lazy_budget=s.lazy_budget, max_batch=s.max_batch,
                      record_candidates=s.record_candidates, record_counterfactual=s.record_counterfactual)


def _atomic_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # ranks sharing a folder never share a temp file
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class JobState:
    """Everything a process needs to attribute items: settings, entries, classes, resolved targets, model."""

    s: AttribSettings
    entries: list[Entry]
    classes: ClassSet
    targets: list[int | str]
    model: ModelState | None = None
    source: Any = None

    def folder(self, i: int) -> str:
        """Output folder name of entry i's target."""
        t = self.targets[i]
        return PRED if t == PRED else folder_name(self.classes.names[int(t)])

    @functools.cached_property
    def _export_names(self) -> dict[str, dict[str, str]]:
        from xaiclip_cli.explain.smdl import export_names_by_target

        return export_names_by_target((self.folder(j), e.rel_stem) for j, e in enumerate(self.entries))

    def export_stem(self, i: int) -> str:
        """Entry i's flat file stem in the reference export (unique among the planned items of its target)."""
        return self._export_names[self.folder(i)][self.entries[i].rel_stem]

    def paths(self, i: int) -> dict[str, Path]:
        """Output paths of entry i."""
        return item_paths(self.s.output_dir, self.folder(i), self.entries[i].rel_stem)

    def image(self, i: int) -> np.ndarray:
        """Entry i's pixels: S×S BGR uint8."""
        from xaiclip_cli.explain.smdl import read_image_bgr

        e = self.entries[i]
        size = self.model.size  # type: ignore[union-attr]
        if e.path is not None:
            return read_image_bgr(e.path, size, self.s.intensity)
        if self.source is None:
            from xaiclip_cli.data.refs import open_source

            self.source = open_source(self.s.dataset, intensity=self.s.intensity)  # type: ignore[arg-type]
        from xaiclip_cli.explain.smdl.pipeline import bgr_at_size

        return bgr_at_size(self.source.get(self.s.split, int(e.dataset_index)).image, size)  # type: ignore[arg-type]


def build_state(s: AttribSettings, source: Any = None) -> JobState:
    """Entries, classes and targets of a run (no model yet); every bad input raises a one-line UsageError."""
    s = default_inputs(s)
    if s.dataset and source is None:
        from xaiclip_cli.data.refs import open_source

        source = open_source(s.dataset, intensity=s.intensity)
    meta = classifier_meta(s)
    classes = build_classes(s, meta, source)
    entries, _ = build_entries(s, source)
    ds_names = [str(n) for n in source.info().class_names] if source is not None else None
    targets = [resolve_target(e.target, classes.names, ds_names) for e in entries]
    entries, targets = _drop_duplicates(entries, targets, classes.names)
    return JobState(s, entries, classes, targets, None, source)


def attribute_entry(st: JobState, i: int) -> dict[str, Any]:
    """Attribute entry i and write npz, sidecar and (last) the done marker; returns the sidecar."""
    import torch

    from xaiclip_cli.explain.smdl import attribute_image, export_reference, save_npz

    s, e, m = st.s, st.entries[i], st.model
    assert m is not None
    t0 = time.perf_counter()
    image = st.image(i)
    target = st.targets[i]
    if target == PRED:
        x, _ = _prepare(m, image, s)
        with torch.no_grad():
            target = int(m.scorer.probs(x[None]).argmax(1)[0])
    div = division_kwargs(s, m.size, st.folder(i), e.rel_stem)
    labels, res = attribute_image(m.scorer, m.preprocess, image, int(target), div, smdl_config(s), fill=s.fill,
                                  bgr_compat=s.bgr_compat)
    paths = st.paths(i)
    save_npz(paths["npz"], labels, res)
    names = st.classes.names
    rule = "label" if str(e.target).startswith("#") else str(e.target)
    side = {"version": RUN_VERSION, "key": e.rel_stem, "source": e.source, "path": e.source.get("path"),
            "target": {"index": int(target), "name": names[int(target)], "rule": rule},
            "prediction": {"index": int(res.prediction), "name": names[int(res.prediction)]},
            "p_full": float(res.p_full), "p_black": float(res.p_black), "regions": int(len(np.unique(labels))),
            "k": int(len(res.order)), "forwards": int(res.forwards), "seconds": round(time.perf_counter() - t0, 4),
            "model_seconds": round(float(res.model_seconds), 4), "search": s.search,
            "front_len": res.front_len, "files": {"npz": paths["npz"].name}}
    lazy = {k.removeprefix("lazy_"): v for k, v in res.extra.items() if k.startswith("lazy_")}
    if lazy:  # lazy search: its settings, refreshes, stale triggers and forward budget
        side["lazy"] = lazy
    if s.export_smdl is not None:
        export_reference(s.export_smdl, s.division, tuple(s.lambdas), s.pending if s.search == "bidirectional"
                         else None, st.folder(i), st.export_stem(i), image, labels, res)
    _atomic_json(paths["json"], side)
    paths["done"].touch()
    return side


def _prepare(m: ModelState, image: np.ndarray, s: AttribSettings) -> Any:
    from xaiclip_cli.explain.smdl import prepare

    return prepare(m.preprocess, image, bgr_compat=s.bgr_compat, fill=s.fill)


def execute(st: JobState, indices: list[int], device: str, advance: Callable[[int], None],
            warn: Callable[[str], None]) -> dict[str, Any]:
    """Attribute the entries at ``indices`` in this process; per-item failures are collected, not raised."""
    if st.model is None:
        st.model = load_model_state(st.s, st.classes, device)
    t0 = time.perf_counter()
    failures: list[dict[str, Any]] = []
    done = forwards = 0
    for i in indices:
        try:
            side = attribute_entry(st, i)
            done += 1
            forwards += side["forwards"]
        except XaiclipError as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            failures.append({"index": i, "error": msg})
            warn(f"{st.entries[i].rel_stem}: {msg}")
        advance(1)
    return {"done": done, "failures": failures, "forwards": forwards, "seconds": time.perf_counter() - t0}


def attrib_share(payload: dict[str, Any], indices: list[int], device: str, advance: Any) -> dict[str, Any]:
    """Runner worker target: rebuild the job from the settings and attribute the entries at ``indices``."""
    st = build_state(AttribSettings.model_validate(payload["settings"]))
    return execute(st, indices, device, advance, lambda m: log.warning(m))


# --- run.json -----------------------------------------------------------------------------------------------------
def run_identity(st: JobState, inputs_hash: str) -> dict[str, Any]:
    """What defines a run's results: the settings minus execution-only fields, the class set, the inputs hash."""
    cfg = {k: v for k, v in st.s.model_dump(mode="json").items() if k not in EXECUTION_FIELDS}
    return {"settings": cfg, "classes": st.classes.identity(), "inputs_sha256": inputs_hash}


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def read_run_json(out: Path) -> dict[str, Any] | None:
    """The run.json of a run folder, None when absent (one-line error when unreadable)."""
    p = out / "run.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise XaiclipError(f"{p}: unreadable run.json ({exc})") from None


def _preflight(st: JobState) -> dict[str, Any]:
    """Check what would fail on every image before anything is written: maps/masks exist, the first image divides
    into >= 2 regions (UsageError, exit 2); returns the first item's region count."""
    from xaiclip_cli.explain.smdl import divide

    s = st.s
    if s.division == "prior-patch":
        if s.prior is None or not s.prior.is_dir():
            raise UsageError(f"--division prior-patch needs --prior DIR (a folder of maps); got {s.prior}")
        missing = [f"{st.folder(i)}/{e.rel_stem}.npy" for i, e in enumerate(st.entries)
                   if prior_path(s.prior, st.folder(i), e.rel_stem) is None]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise UsageError(f"--prior {s.prior}: no map for {missing[0]}{more}")
    if s.division == "sam":
        if s.sam_masks is None or not s.sam_masks.is_dir():
            raise UsageError(f"--division sam needs --sam-masks DIR (<rel-stem>.npz files); got {s.sam_masks}")
        missing = [f"{e.rel_stem}.npz" for e in st.entries if not (s.sam_masks / f"{e.rel_stem}.npz").is_file()]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise UsageError(f"--sam-masks {s.sam_masks}: no {missing[0]}{more}")
    if not st.entries:
        return {"regions_first": None}
    try:
        image = st.image(0)
    except XaiclipError:
        return {"regions_first": None}  # an unreadable first image is that item's failure, not the run's
    div = division_kwargs(s, st.model.size, st.folder(0), st.entries[0].rel_stem)  # type: ignore[union-attr]
    mode = div.pop("mode")
    labels = divide(image, mode, **div)
    return {"regions_first": int(len(np.unique(labels)))}


def run_attrib(s: AttribSettings, progress: Callable[..., Any], warn: Callable[[str], None],
               env: dict[str, str] | None = None) -> dict[str, Any]:
    """Plan, check, shard and run `attrib run`; returns counts, paths and timing for the result model."""
    from xaiclip_cli.parallel.ranks import rank_from_env
    from xaiclip_cli.parallel.runner import JobSpec, check_gpus, local_shares, run_job
    from xaiclip_cli.versions import lib_versions

    s = default_inputs(s)
    device = "cpu" if s.device == "cpu" else s.device
    check_gpus(s.gpus, device)
    st = build_state(s)
    _, inputs_hash = build_entries(st.s, st.source)
    out = s.output_dir
    ident = run_identity(st, inputs_hash)
    old = read_run_json(out)
    if old is not None and not s.overwrite and old.get("identity") != ident:
        keys = config_diff(old.get("identity") or {}, ident)
        raise UsageError(f"{out} holds another attrib run (differs in: {', '.join(keys[:6]) or 'version'}); use "
                         "another --output-dir or --overwrite")
    local_device = f"cuda:{s.gpus[0]}" if len(s.gpus) == 1 and device != "cpu" else device
    st.model = load_model_state(s, st.classes, "cpu" if len(s.gpus) > 1 else local_device)
    pre = _preflight(st)
    plan_items = [{"key": e.rel_stem, "target": st.folder(i)} for i, e in enumerate(st.entries)]
    if old is not None and not s.overwrite and old.get("identity") == ident:
        known = {(p["target"], p["key"]) for p in plan_items}
        plan_items = [p for p in old.get("plan", {}).get("items", []) if (p["target"], p["key"]) not in known] \
            + plan_items
    doc = {"version": RUN_VERSION, "identity": ident, "settings": s.model_dump(mode="json"),
           "model": {k: v for k, v in st.model.model.items() if k != "provenance"},
           "provenance": st.model.model.get("provenance"), "score": st.model.family,
           "logit_scale": st.model.logit_scale, "image_size": st.model.size,
           "division": {"mode": s.division, "region_size": s.region_size, "grid": s.grid, "regions_first": pre[
               "regions_first"]}, "lambdas": s.lambdas, "fill": s.fill,
           "colour": "bgr" if s.bgr_compat else "rgb", "search": s.search, "k": s.k,
           "pending": s.pending if s.search == "bidirectional" else None, "inputs_sha256": inputs_hash,
           "versions": lib_versions(), "plan": {"n": len(plan_items), "items": plan_items}}

    def is_done(i: int) -> bool:
        return st.paths(i)["done"].is_file()

    def local(indices: list[int], dev: str, advance: Any) -> dict[str, Any]:
        return execute(st, indices, dev, advance, warn)

    def plan_hook(todo: list[int], rank: Any) -> None:
        # Every rank writes the same document: ranks on nodes without a shared folder each get a mergeable run.
        out.mkdir(parents=True, exist_ok=True)
        _atomic_json(out / "run.json", doc)

    spec = JobSpec("attrib run", len(st.entries), is_done, local,
                   worker_target="xaiclip_cli.explain.attrib_job:attrib_share",
                   payload={"settings": s.model_dump(mode="json")}, sharding="blocks", overwrite=s.overwrite,
                   output_dir=out, shard_reports=True, failed_log=True,
                   describe=lambda i: {"key": st.entries[i].rel_stem, "target": st.folder(i),
                                       "path": st.entries[i].source.get("path")})
    todo_all = [i for i in range(len(st.entries)) if s.overwrite or not is_done(i)]
    todo_n = sum(len(x) for x in local_shares(len(st.entries), todo_all, s.gpus, rank_from_env(env), "blocks"))
    with progress(todo_n, "attrib run", unit="images") as advance:
        report = run_job(spec, gpus=s.gpus, device=local_device if len(s.gpus) <= 1 else device, advance=advance,
                         env=env, plan_hook=plan_hook)
    for o in report.outcomes:
        if o.exit_code != 0:
            warn(f"worker {o.rank} (gpu {o.gpu}) failed: {o.error}; rerun to resume its images")
    return {"output_dir": str(out), "planned": report.planned, "skipped": report.skipped,
            "todo": len(report.todo), "done": report.done, "failed": report.failed, "failures": report.failures,
            "forwards": int(report.stats.get("forwards", 0)), "seconds": report.seconds,
            "workers": report.workers, "exit_code": report.exit_code, "classes": len(st.classes.names),
            "regions_first": pre["regions_first"], "score": st.model.family, "logit_scale": st.model.logit_scale,
            "image_size": st.model.size, "model": st.model.model.get("model") or st.model.model.get("checkpoint")}


# --- merge, export, show ------------------------------------------------------------------------------------------
def _planned_items(run: Path, doc: dict[str, Any]) -> list[dict[str, str]]:
    items = (doc.get("plan") or {}).get("items")
    if not isinstance(items, list):
        raise XaiclipError(f"{run / 'run.json'}: no plan (not written by `attrib run`)")
    return items


def merge_runs(runs: list[Path], allow_partial: bool = False) -> dict[str, Any]:
    """Check run folders (same identity, every planned item marked with a readable npz); write index.jsonl and
    summary.json into the first folder. Returns counts, missing items and mean recorded AUCs."""
    from xaiclip_cli.explain.smdl import load_npz, recorded_auc

    if not runs:
        raise UsageError("give one or more run folders: xaiclip attrib merge OUT [OUT...]")
    docs = []
    for r in runs:
        doc = read_run_json(r)
        if doc is None:
            raise UsageError(f"{r}: no run.json (not an `attrib run` folder)")
        docs.append(doc)
    first = docs[0].get("identity") or {}
    for r, doc in zip(runs[1:], docs[1:], strict=False):
        if (doc.get("identity") or {}) != first:
            keys = config_diff(first, doc.get("identity") or {})
            raise UsageError(f"{r} was run with another configuration than {runs[0]} (differs in: "
                             f"{', '.join(keys[:8])})")
    index: list[dict[str, Any]] = []
    missing: list[str] = []
    seen: set[tuple[str, str]] = set()
    ins, dels = [], []
    for r, doc in zip(runs, docs, strict=True):
        for it in _planned_items(r, doc):
            key = (it["target"], it["key"])
            if key in seen:
                continue
            p = item_paths(r, it["target"], it["key"])
            if not p["done"].is_file():
                continue
            seen.add(key)
            try:
                npz = load_npz(p["npz"])
                a_ins, a_del = recorded_auc(npz)
            except XaiclipError as exc:
                missing.append(f"{it['target']}/{it['key']} (unreadable: {str(exc).splitlines()[0]})")
                seen.discard(key)
                continue
            side = json.loads(p["json"].read_text(encoding="utf-8")) if p["json"].is_file() else {}
            ins.append(a_ins)
            dels.append(a_del)
            index.append({"key": it["key"], "target": it["target"], "run": str(r),
                          "npz": str(p["npz"].relative_to(r)), "insertion_auc": a_ins, "deletion_auc": a_del,
                          "prediction": (side.get("prediction") or {}).get("name"),
                          "forwards": side.get("forwards"), "path": side.get("path")})
    # Planned = the union of all plans (list order of the first run, then new items of later runs).
    planned: list[tuple[str, str]] = []
    pset: set[tuple[str, str]] = set()
    for r, doc in zip(runs, docs, strict=True):
        for it in _planned_items(r, doc):
            k = (it["target"], it["key"])
            if k not in pset:
                pset.add(k)
                planned.append(k)
    missing += [f"{t}/{k}" for t, k in planned if (t, k) not in seen and not any(m.startswith(f"{t}/{k} (")
                                                                                   for m in missing)]
    order = {k: i for i, k in enumerate(planned)}
    index.sort(key=lambda row: order.get((row["target"], row["key"]), len(order)))
    out = runs[0]
    with open(out / ".index.jsonl.tmp", "w", encoding="utf-8") as fh:
        for row in index:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(out / ".index.jsonl.tmp", out / "index.jsonl")
    summary = {"runs": [str(r) for r in runs], "planned": len(planned), "complete": len(index),
               "missing": len(missing), "missing_items": missing[:100],
               "insertion_auc_mean": float(np.mean(ins)) if ins else None,
               "deletion_auc_mean": float(np.mean(dels)) if dels else None,
               "forwards_total": int(sum(int(r.get("forwards") or 0) for r in index)),
               "identity": first}
    _atomic_json(out / "summary.json", summary)
    summary["exit_code"] = 0 if not missing or allow_partial else 3
    return summary


def run_items(run: Path) -> list[tuple[dict[str, str], dict[str, Path]]]:
    """The finished items of a run folder in plan order: (plan item, paths)."""
    doc = read_run_json(run)
    if doc is None:
        raise UsageError(f"{run}: no run.json (not an `attrib run` folder)")
    out = []
    for it in _planned_items(run, doc):
        p = item_paths(run, it["target"], it["key"])
        if p["done"].is_file():
            out.append((it, p))
    return out


def _image_for(side: dict[str, Any], doc: dict[str, Any]) -> np.ndarray:
    """An item's S×S BGR pixels again (file or dataset position), for export and show."""
    from xaiclip_cli.explain.smdl import read_image_bgr

    size = int(doc["image_size"])
    src = side.get("source") or {}
    if side.get("path") and Path(side["path"]).is_file():
        return read_image_bgr(side["path"], size)
    if src.get("dataset") is not None:
        from xaiclip_cli.data.refs import open_source
        from xaiclip_cli.explain.smdl.pipeline import bgr_at_size

        return bgr_at_size(open_source(src["dataset"]).get(src["split"], int(src["index"])).image, size)
    raise XaiclipError(f"{side.get('key')}: its image {side.get('path')} is no longer there")


def _result_from_npz(npz: dict[str, Any]) -> Any:
    from xaiclip_cli.explain.smdl import SmdlResult

    extra = {k: v for k, v in npz.items() if k.endswith(("_increase", "_decrease"))}
    fl = npz.get("front_len")
    return SmdlResult(order=npz["order"], confidence=npz["confidence"], effectiveness=npz["effectiveness"],
                      consistency=npz["consistency"], collaboration=npz["collaboration"], objective=npz["objective"],
                      p_full=float(npz["p_full"]), p_black=float(npz["p_black"]), area_ins=npz["area_ins"],
                      area_del=npz["area_del"], front_len=None if fl is None else int(fl), forwards=0, seconds=0.0,
                      model_seconds=0.0, prediction=-1, p_pred=npz.get("p_pred"), extra=extra)


def export_run(run: Path, out: Path) -> dict[str, Any]:
    """Write the reference npy/json tree of every finished item of a run (needs the images)."""
    from xaiclip_cli.explain.smdl import export_names_by_target, export_reference, load_npz

    doc = read_run_json(run) or {}
    s = doc.get("settings") or {}
    n = 0
    failures = []
    root = None
    # Names from the whole plan: the same ones `run --export-smdl` writes.
    names = export_names_by_target((it["target"], it["key"]) for it in _planned_items(run, doc))
    for it, p in run_items(run):
        side = json.loads(p["json"].read_text(encoding="utf-8"))
        try:
            image = _image_for(side, doc)
            npz = load_npz(p["npz"])
            npy, _ = export_reference(out, s["division"], tuple(s["lambdas"]), s["pending"] if
                                      s["search"] == "bidirectional" else None, it["target"],
                                      names[it["target"]][it["key"]], image, npz["labels"], _result_from_npz(npz))
            root = npy.parents[2]
            n += 1
        except XaiclipError as exc:
            failures.append({"key": it["key"], "error": str(exc)})
    return {"out": str(root or out), "exported": n, "failed": len(failures), "failures": failures}


def show_run(run: Path, out: Path | None, top_m: int = 5, smooth: float = 0.0, figures: bool = True
             ) -> dict[str, Any]:
    """One PNG per finished item (viz/attrib_figure.py::render) and a per-item summary (AUCs, max objective)."""
    from xaiclip_cli.explain.smdl import load_npz, recorded_auc

    doc = read_run_json(run) or {}
    out = out if out is not None else run / "figures"
    render = None
    if figures:
        try:
            from xaiclip_cli.viz.attrib_figure import render
        except ImportError as exc:
            raise XaiclipError("attrib show needs xaiclip_cli.viz.attrib_figure (branch baselines), which is not "
                               "installed") from exc
    rows, failures = [], []
    for it, p in run_items(run):
        side = json.loads(p["json"].read_text(encoding="utf-8"))
        try:
            npz = load_npz(p["npz"])
            a_ins, a_del = recorded_auc(npz)
            png = None
            if render is not None:
                png = out / it["target"] / f"{it['key']}.png"
                png.parent.mkdir(parents=True, exist_ok=True)
                title = f"{it['key']} | target {it['target']} | ins {a_ins:.3f} del {a_del:.3f}"
                render(npz, _image_for(side, doc)[:, :, ::-1], str(png), top_m=top_m, smooth=smooth, title=title)
            rows.append({"key": it["key"], "target": it["target"], "insertion_auc": round(a_ins, 6),
                         "deletion_auc": round(a_del, 6), "max_objective_index": int(np.argmax(npz["objective"])),
                         "regions": int(len(npz["order"])), "png": str(png) if png else None})
        except XaiclipError as exc:
            failures.append({"key": it["key"], "error": str(exc)})
    return {"run": str(run), "out": str(out) if render is not None else None, "items": rows,
            "failed": len(failures), "failures": failures}


# --- baseline maps ------------------------------------------------------------------------------------------------
def baseline_path(out: Path, method: str, target_folder: str, rel_stem: str) -> Path:
    """OUT/maps/<method>/<target>/<rel-stem>.npy."""
    return out / "maps" / method / target_folder / f"{rel_stem}.npy"


def _baseline_entry(st: JobState, i: int) -> None:
    import torch

    try:
        from xaiclip_cli.explain.baselines import compute_map
    except ImportError as exc:
        raise XaiclipError("attrib baseline needs xaiclip_cli.explain.baselines (branch baselines), which is not "
                           "installed") from exc
    s, m = st.s, st.model
    assert m is not None
    x, _ = _prepare(m, st.image(i), s)
    target = st.targets[i]
    if target == PRED:
        with torch.no_grad():
            target = int(m.scorer.probs(x[None]).argmax(1)[0])
    params: dict[str, Any] = {}
    if s.method in ("rise", "lime"):
        if s.fill == "blur":
            raise UsageError(f"--method {s.method} takes --fill black or mean (blur is for attrib run)")
        params = {"fill": s.fill, **({"n": s.rise_n} if s.method == "rise" else {"samples": s.lime_samples})}
    if m.model["kind"] == "clip":
        amap = compute_map(s.method, m.scorer.backend, x, int(target), text_features=m.scorer.text,
                           logit_scale=m.logit_scale, family=m.family, seed=s.seed, **params)
    else:
        amap = compute_map(s.method, m.scorer, x, int(target), seed=s.seed, **params)
    p = baseline_path(s.output_dir, s.method, st.folder(i), st.entries[i].rel_stem)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp.npy")
    np.save(tmp, np.asarray(amap, dtype=np.float32))
    os.replace(tmp, p)


def _baseline_execute(st: JobState, indices: list[int], device: str, advance: Any, warn: Any) -> dict[str, Any]:
    if st.model is None:
        st.model = load_model_state(st.s, st.classes, device)
    failures, done = [], 0
    for i in indices:
        try:
            _baseline_entry(st, i)
            done += 1
        except XaiclipError as exc:
            failures.append({"index": i, "error": str(exc).splitlines()[0]})
            warn(f"{st.entries[i].rel_stem}: {str(exc).splitlines()[0]}")
        advance(1)
    return {"done": done, "failures": failures}


def baseline_share(payload: dict[str, Any], indices: list[int], device: str, advance: Any) -> dict[str, Any]:
    """Runner worker target of `attrib baseline`."""
    st = build_state(AttribSettings.model_validate(payload["settings"]))
    return _baseline_execute(st, indices, device, advance, lambda m: log.warning(m))


def run_baseline(s: AttribSettings, progress: Callable[..., Any], warn: Callable[[str], None]) -> dict[str, Any]:
    """`attrib baseline`: float32 [S,S] saliency maps of every entry (existing maps kept unless --overwrite)."""
    from xaiclip_cli.parallel.runner import JobSpec, check_gpus, run_job

    s = default_inputs(s)
    check_gpus(s.gpus, s.device)
    st = build_state(s)
    local_device = f"cuda:{s.gpus[0]}" if len(s.gpus) == 1 and s.device != "cpu" else s.device
    st.model = load_model_state(s, st.classes, "cpu" if len(s.gpus) > 1 else local_device)

    def is_done(i: int) -> bool:
        return baseline_path(s.output_dir, s.method, st.folder(i), st.entries[i].rel_stem).is_file()

    spec = JobSpec("attrib baseline", len(st.entries), is_done,
                   lambda idx, dev, adv: _baseline_execute(st, idx, dev, adv, warn),
                   worker_target="xaiclip_cli.explain.attrib_job:baseline_share",
                   payload={"settings": s.model_dump(mode="json")}, sharding="blocks", overwrite=s.overwrite,
                   output_dir=s.output_dir, failed_log=False,
                   describe=lambda i: {"key": st.entries[i].rel_stem})
    todo_n = sum(1 for i in range(len(st.entries)) if s.overwrite or not is_done(i))
    s.output_dir.mkdir(parents=True, exist_ok=True)
    with progress(todo_n, f"attrib baseline {s.method}", unit="images") as advance:
        report = run_job(spec, gpus=s.gpus, device=local_device, advance=advance)
    return {"output_dir": str(s.output_dir / "maps" / s.method), "method": s.method, "planned": report.planned,
            "skipped": report.skipped, "done": report.done, "failed": report.failed, "failures": report.failures,
            "seconds": report.seconds, "exit_code": report.exit_code, "image_size": st.model.size}
