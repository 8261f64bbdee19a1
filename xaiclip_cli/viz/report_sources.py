"""Read what the report shows from each input: store files and `cam run`, `attrib run`, `eval` output folders.

Each input is recognised by its files (``eval.json``; ``run.json`` + ``items/``; ``manifest.jsonl``; an HDF5 store)
and read into a :class:`Source`: provenance, the resolved configs, dataset-level results, dataset-level curves and
gallery items. Pictures are loaded lazily (only the items the gallery shows are decoded). Unknown keys are kept as
they are, so the report renders new metrics without a change here.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xaiclip_cli.errors import UsageError
from xaiclip_cli.metrics.maps import image_key

Loader = Callable[[], "np.ndarray | None"]
KINDS = ("store", "cam", "attrib", "eval")
# Columns of per_image.csv that name the image, tried in this order.
KEY_COLUMNS = ("image", "stem", "name", "path", "file", "id", "image_id", "index")
MASK_COLUMNS = ("mask", "mask_path", "mask_file")
_STORE_SUFFIXES = (".h5", ".hdf5")
STORE_COMMANDS = ("zeroshot", "probe")  # eval commands scoring a feature store: no per-image explanations


@dataclass
class Picture:
    """One picture of a gallery item: a caption, a loader returning uint8 RGB, and how to encode it."""

    caption: str
    load: Loader
    fmt: str = "jpeg"
    sized: Callable[[int], np.ndarray | None] | None = None  # draws directly at thumbnail size (cheaper)


@dataclass
class Item:
    """One image of the gallery, joined across inputs by ``key`` (the image's stem)."""

    key: str
    pictures: list[Picture] = field(default_factory=list)
    curves: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)
    mask: Loader | None = None  # ground-truth region: its outline is drawn over the input picture
    curve_groups: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = field(default_factory=dict)  # by input


@dataclass
class Source:
    """One input of the report, read."""

    kind: str
    path: Path
    label: str
    provenance: dict[str, Any] = field(default_factory=dict)
    configs: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, tuple[np.ndarray | None, np.ndarray]] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    short: str = ""  # label prefixed to per-image metric names that two inputs share (default: label)
    aliases: dict[str, str] = field(default_factory=dict)  # other names of an image (a cam map name) → its key
    bands: dict[str, float] = field(default_factory=dict)  # curve name → reference level (sanity pass band)
    ticks: dict[str, list[str]] = field(default_factory=dict)  # curve name → x tick labels (sanity step names)

    def __post_init__(self) -> None:
        self.short = self.short or self.label


def detect_kind(path: Path) -> str:
    """The kind of an input, from its files; a clear UsageError when it is none of them."""
    if not path.exists():
        raise UsageError(f"{path}: not found")
    if path.is_file():
        if path.suffix.lower() in _STORE_SUFFIXES:
            return "store"
        raise UsageError(f"{path}: not a store file (.h5) or a cam/attrib/eval output folder")
    if (path / "eval.json").is_file() or (path / "compare.json").is_file():
        return "eval"
    if (path / "run.json").is_file() and (path / "items").is_dir():
        return "attrib"
    if (path / "manifest.jsonl").is_file():
        return "cam"
    raise UsageError(f"{path}: not a cam, attrib or eval output folder (no manifest.jsonl, run.json + items/, "
                     "eval.json or compare.json)")


def read_source(path: Path, datasets: DatasetCache | None = None) -> Source:
    """Detect and read one input."""
    kind = detect_kind(path)
    datasets = datasets or DatasetCache()
    reader = {"store": _read_store, "cam": _read_cam, "attrib": _read_attrib, "eval": _read_eval}[kind]
    return reader(path, datasets)


# --------------------------------------------------------------------------------------------------- helpers
def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not readable JSON ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _finite(value: Any) -> float | None:
    """A finite float from a CSV cell or JSON number, else None."""
    if isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@functools.lru_cache(maxsize=4)
def _read_rgb(path: str) -> np.ndarray | None:
    """Decode an image once for the pictures that share it (input and attrib order)."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        return None
    with Image.open(p) as im:
        arr = np.asarray(im.convert("RGB"))
    arr.setflags(write=False)
    return arr


def _image_file(path: str | Path) -> Loader:
    return lambda: _read_rgb(str(path))


def _mask_file(path: str | Path) -> Loader:
    def load() -> np.ndarray | None:
        p = Path(path)
        if not p.is_file():
            return None
        if p.suffix.lower() == ".npy":
            return np.load(p, allow_pickle=False)
        from PIL import Image

        with Image.open(p) as im:
            return np.asarray(im.convert("L"))

    return load


class DatasetCache:
    """Opened data sets by reference, so gallery pictures of dataset images (and their masks) can be read back."""

    def __init__(self) -> None:
        self._open: dict[str, Any] = {}
        self._last: tuple[tuple[str, str, int], Any] | None = None  # image and mask of one item read it twice

    def sample(self, ref: str, split: str, index: int) -> Any:
        """The data set's sample, or None when the data set cannot be opened here."""
        if self._last is not None and self._last[0] == (ref, split, int(index)):
            return self._last[1]
        if ref not in self._open:
            try:
                from xaiclip_cli.data.refs import open_source

                self._open[ref] = open_source(ref)
            except Exception:  # noqa: BLE001 - a data set missing on this machine only loses the input picture
                self._open[ref] = None
        src = self._open[ref]
        if src is None:
            return None
        try:
            sample = src.get(split, int(index))
        except Exception:  # noqa: BLE001
            sample = None
        self._last = ((ref, split, int(index)), sample)
        return sample

    def loaders(self, image: dict[str, Any]) -> tuple[Loader | None, Loader | None]:
        """(image loader, mask loader) for a sidecar's ``image`` block (a file path or a data set position)."""
        if image.get("path"):
            return _image_file(image["path"]), None
        ref, split, index = image.get("dataset"), image.get("split"), image.get("index")
        if not ref or split is None or index is None:
            return None, None
        return (lambda: getattr(self.sample(ref, split, index), "image", None),
                lambda: getattr(self.sample(ref, split, index), "mask", None))


def _provenance_of(doc: dict[str, Any]) -> dict[str, Any]:
    """Model id, weights hash, versions and data set from a sidecar/run.json/eval.json, wherever they sit."""
    prov = doc.get("provenance") if isinstance(doc.get("provenance"), dict) else {}
    model = doc.get("model") if isinstance(doc.get("model"), dict) else {}
    out: dict[str, Any] = {}
    for key in ("model_id", "model", "backend"):
        for d in (prov, model, doc):
            v = d.get(key)
            if isinstance(v, (str, int, float)) and "model" not in out:
                out["model"] = str(v)
    for key in ("sha256", "weights_sha256", "weights_hash", "model_hash", "hash", "model_revision"):
        for d in (prov, model, doc):
            v = d.get(key)
            if isinstance(v, str) and v and "weights hash" not in out:
                out["weights hash"] = v
    for key in ("lib_versions", "versions"):
        for d in (prov, model, doc):
            if isinstance(d.get(key), dict) and "versions" not in out:
                out["versions"] = d[key]
    ds = doc.get("dataset")
    if isinstance(ds, (str, dict)):
        out["dataset"] = ds
    return out


# ----------------------------------------------------------------------------------------------------- store
def _read_store(path: Path, datasets: DatasetCache) -> Source:
    from xaiclip_cli.store.reader import StoreReader

    try:
        with StoreReader(path) as r:
            summary = r.summarize(max_templates=5)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken file is a user input problem here
        raise UsageError(f"{path}: not a readable feature store ({type(exc).__name__})") from exc
    prov = summary.get("provenance") or {}
    src = Source("store", path, path.name)
    src.provenance = {**_provenance_of({"provenance": prov}), "counts": summary.get("split_counts") or {}}
    if "dataset" in prov:
        src.provenance["dataset"] = prov["dataset"]
    src.results = {k: v for k, v in summary.items() if k not in ("path",)}
    if prov:
        src.configs["store provenance"] = json.dumps(prov, indent=2, ensure_ascii=False, default=str)
    return src


# ------------------------------------------------------------------------------------------------------- cam
def _read_cam(path: Path, datasets: DatasetCache) -> Source:
    src = Source("cam", path, path.name)
    cfg = _text(path / "config.yaml")
    if cfg:
        src.configs["config.yaml"] = cfg
    lines = (path / "manifest.jsonl").read_text(encoding="utf-8", errors="replace").splitlines()
    by_key: dict[str, Item] = {}
    methods: dict[str, int] = {}
    first_side: dict[str, Any] | None = None
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            name, files = str(rec["name"]), dict(rec.get("files") or {})
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            bad += 1
            continue
        folder = Path(rec.get("dir") or path)
        if not folder.is_dir():  # a moved run folder: the manifest's absolute dir is stale, try relative
            folder = path / Path(str(rec.get("dir", ""))).name
        side_path = folder / files.get("sidecar", f"{name}.json")
        side = None
        if side_path.is_file():
            try:
                side = json.loads(side_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                side = None
        if side is None:
            src.warnings.append(f"{path.name}: {name}: sidecar {side_path.name} missing or unreadable")
            side = rec
        if first_side is None and side is not rec:
            first_side = side
        image = dict(side.get("image") or rec.get("image") or {})
        key = image_key(image, name)
        method = str(side.get("method") or rec.get("method") or "cam")
        methods[method] = methods.get(method, 0) + 1
        item = by_key.setdefault(key, Item(key))
        src.aliases[name] = key  # eval rows name cam maps by their file name
        load_image, load_mask = datasets.loaders(image)
        if load_image is not None and not any(p.caption == "input" for p in item.pictures):
            item.pictures.insert(0, Picture("input", load_image))
        if load_mask is not None and item.mask is None:
            item.mask = load_mask
        if files.get("overlay"):
            target = side.get("target_name") or rec.get("target_name") or ""
            item.pictures.append(Picture(f"{method} · {target}", _image_file(folder / files["overlay"])))
        score = _finite(side.get("target_score", rec.get("target_score")))
        if score is not None:
            item.metrics[f"{method} score"] = score
        item.info.setdefault("target", str(side.get("target_name") or rec.get("target_name") or ""))
        if side.get("all_zero"):
            item.info[f"{method}"] = "all-zero map"
    if bad:
        src.warnings.append(f"{path.name}: {bad} unreadable manifest line(s) skipped")
    src.items = list(by_key.values())
    side = first_side or {}
    src.provenance = _provenance_of(side)
    img = side.get("image") or {}
    if isinstance(img, dict) and img.get("dataset"):
        src.provenance["dataset"] = f"{img['dataset']} ({img.get('split', '?')})"
    src.provenance["counts"] = {"images": len(by_key), "maps": sum(methods.values()), **{
        f"maps {m}": c for m, c in methods.items()}}
    src.results = {"methods": methods, "score": side.get("score"), "layer": (side.get("layer") or {}).get("name"),
                   "target_rule": side.get("target_rule")}
    return src


# ---------------------------------------------------------------------------------------------------- attrib
def _attrib_curves(z: Any) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Recorded insertion/deletion curves of one attrib item, on the axes of ``smdl.results.recorded_auc``.

    Insertion: x = area_ins, y = [1 − collaboration_k] + consistency; deletion: x = area_del,
    y = [consistency_k] + (1 − collaboration) (metrics.md §1).
    """
    keys = set(z.files)
    if not {"consistency", "collaboration", "area_ins", "area_del"} <= keys:
        return []
    from xaiclip_cli.metrics.insertion_deletion import smdl_curves

    try:
        xi, yi, xd, yd = smdl_curves(z["area_ins"], z["consistency"], z["collaboration"], z["area_del"])
    except ValueError:  # inconsistent lengths: the item is shown without curves
        return []
    if xd.size != xi.size:
        return []
    return [("insertion", xi, yi), ("deletion", xd, yd)]


def _name(value: Any) -> str:
    """A class named by a sidecar: ``{"index": 2, "name": "eosinophil"}`` or a plain value."""
    if isinstance(value, dict):
        return str(value.get("name", value.get("index", "")))
    return "" if value is None else str(value)


def _read_attrib(path: Path, datasets: DatasetCache) -> Source:
    src = Source("attrib", path, path.name)
    run = _json(path / "run.json")
    if not isinstance(run, dict):
        raise UsageError(f"{path / 'run.json'}: expected a JSON object")
    # The plan lists every item: a count is enough here (run.json keeps the list).
    plan = run.get("plan") if isinstance(run.get("plan"), dict) else None
    brief = {**run, "plan": {k: v for k, v in plan.items() if k != "items"}} if plan is not None else run
    src.configs["run.json"] = json.dumps(brief, indent=2, ensure_ascii=False, default=str)
    src.provenance = _provenance_of(run)
    config = run.get("config") if isinstance(run.get("config"), dict) else run
    src.provenance.update(_provenance_of(config))
    items_dir = path / "items"
    npzs = sorted(items_dir.rglob("*.npz"))
    targets: dict[str, int] = {}
    for npz in npzs:
        rel = npz.relative_to(items_dir)
        target = rel.parts[0] if len(rel.parts) > 1 else ""
        side_path = npz.with_suffix(".json")
        side: dict[str, Any] = {}
        if side_path.is_file():
            try:
                loaded = json.loads(side_path.read_text(encoding="utf-8"))
                side = loaded if isinstance(loaded, dict) else {}
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                src.warnings.append(f"{path.name}: {rel}: sidecar unreadable")
        try:
            with np.load(npz, allow_pickle=False) as z:
                labels = np.asarray(z["labels"]) if "labels" in z.files else None
                order = np.asarray(z["order"]) if "order" in z.files else None
                curves = _attrib_curves(z)
        except Exception as exc:  # noqa: BLE001 - one broken item must not lose the report
            src.warnings.append(f"{path.name}: {rel}: unreadable npz ({type(exc).__name__})")
            continue
        targets[target] = targets.get(target, 0) + 1
        source = side.get("source") if isinstance(side.get("source"), dict) else {}
        image = {**source, **({"path": side["path"]} if side.get("path") else {})}
        key = image_key(image, npz.stem) if image else npz.stem
        item = Item(key)
        load_image, load_mask = datasets.loaders(image) if image else (None, None)
        if load_image is not None:
            item.pictures.append(Picture("input", load_image))
        item.mask = load_mask
        if labels is not None and order is not None:
            def order_pic(size: int | None = None, labels: np.ndarray = labels, order: np.ndarray = order,
                          load_image: Loader | None = load_image) -> np.ndarray:
                from xaiclip_cli.viz.thumbs import region_order_image, thumbnail

                base = load_image() if load_image is not None else None
                if size is not None and base is not None:
                    base = thumbnail(base, size)  # regions drawn on the thumbnail, not the full image
                return region_order_image(labels, order.tolist(), base)

            # PNG keeps flat region colours small; blended over a photograph JPEG is several times smaller.
            fmt = "png" if load_image is None else "jpeg"
            item.pictures.append(Picture(f"attrib order · {target}" if target else "attrib order", order_pic, fmt,
                                         sized=order_pic))
        for name, x, y in curves:
            item.curves.append((name, x, y))
            area = float(np.trapezoid(y, x)) if np.all(np.isfinite(y)) else None
            if area is not None:
                item.metrics[f"attrib {name} AUC (recorded)"] = area
        item.info["target"] = target or _name(side.get("target"))
        if side.get("prediction") is not None:
            item.info["prediction"] = _name(side["prediction"])
        src.items.append(item)
    src.provenance["counts"] = {"items": len(src.items), **{f"target {t}": c for t, c in targets.items()}}
    src.results = {k: v for k, v in brief.items()
                   if k not in ("provenance", "versions", "lib_versions", "settings", "identity")}
    return src


# ------------------------------------------------------------------------------------------------------ eval
# per_image.csv columns that describe a row rather than measure it (metrics.results schema, plus older names).
NON_METRIC = {"image", "image_stem", "target", "label", "status", "reason", "method", "layout", "area_tertile",
              "split", "index", "id", "k", "otsu_t", "tuned_t", "seed", "mask", "mask_path", "mask_file", "path",
              "file", "stem", "name", "target_score"}


# Columns shown under a gallery item's name (the rest stay in per_image.csv).
INFO_COLUMNS = ("target", "method", "status", "reason")


def _metric_names(doc: dict[str, Any]) -> set[str]:
    """Names eval.json summarises (its ``metrics`` and ``per_class`` keys): the per-image metric columns."""
    names = set(doc.get("metrics") or {}) if isinstance(doc.get("metrics"), dict) else set()
    per_class = doc.get("per_class")
    if isinstance(per_class, dict):
        for block in per_class.values():
            if isinstance(block, dict):
                names |= set(block)
    return names


def row_key(raw: str) -> str:
    """The image key of a per_image.csv/curves.npz name: the last path part without suffix
    (``test/test_00000_gradcam_x`` → ``test_00000_gradcam_x``; ``eosinophil/test_00002`` → ``test_00002``)."""
    return Path(str(raw)).stem if str(raw).strip() else ""


def _read_per_image(path: Path, src: Source, datasets: DatasetCache, metric_names: set[str]) -> list[Item]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        src.warnings.append(f"{src.label}: per_image.csv unreadable ({type(exc).__name__})")
        return []
    if not rows:
        return []
    cols = [c for c in rows[0] if c is not None]
    key_col = next((c for c in KEY_COLUMNS if c in cols), None)
    mask_col = next((c for c in MASK_COLUMNS if c in cols), None)

    def numeric(c: str) -> bool:
        cells = [(r.get(c) or "").strip() for r in rows]
        return any(_finite(v) is not None for v in cells) and all(
            v == "" or _finite(v) is not None or v.lower() in ("nan", "inf", "-inf") for v in cells)

    # What eval.json summarises, plus any other numeric column (sanity writes <check>_<sim>_final per image
    # and summarises it as <check>/<sim>_final); descriptive columns never count.
    metric_cols = [c for c in cols if c != key_col and (c in metric_names or (c not in NON_METRIC and numeric(c)))]
    methods = {r.get("method") for r in rows if r.get("method")}
    by_method = len(methods) > 1  # one eval over several methods: metric names carry the method
    items = []
    for i, r in enumerate(rows):
        raw_key = (r.get(key_col) or "") if key_col else ""
        # image_stem names the explained image (pairs methods); image is the map's key.
        item = Item(row_key(r.get("image_stem") or "") or row_key(raw_key) or f"row{i:05d}")
        prefix = f"{r['method']} " if by_method and r.get("method") else ""
        for c in metric_cols:
            v = _finite(r.get(c))
            if v is not None:
                item.metrics[prefix + c] = v
        for c in INFO_COLUMNS:
            if c in cols and r.get(c) and not (c == "status" and r[c] == "ok"):
                item.info[c] = str(r[c])
        if key_col == "path" and raw_key:
            item.pictures.append(Picture("input", _image_file(raw_key)))
        if mask_col and r.get(mask_col):
            item.mask = _mask_file(r[mask_col])
        items.append(item)
    return items


def _step_names(z: Any) -> dict[str, list[str]]:
    """Sanity ``steps_<check>`` labels keyed by the curves they label (``sim_<check>_<similarity>``)."""
    steps = {k[len("steps_"):]: [str(v) for v in np.asarray(z[k]).reshape(-1)] for k in z.files
             if k.startswith("steps_") and np.asarray(z[k]).dtype.kind in "US"}
    out = {}
    for k in z.files:
        for check, labels in steps.items():
            if k.startswith(f"sim_{check}_"):
                out[k] = labels
    return out


def _curve_keys(z: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]:
    """Split curves.npz into y arrays [N, T] (or [T]) by curve name, their x axes by the same name, and the
    image names. metrics.results: ``y_K``/``x_K`` [n, s+1], ``image`` [n], sanity ``sim_<check>_<sim>``."""
    ys: dict[str, np.ndarray] = {}
    xs: dict[str, np.ndarray] = {}
    names = None
    for k in z.files:
        a = np.asarray(z[k])
        if a.dtype.kind in "USO":
            if k in ("image", "images", "names", "keys", "stems", "paths"):
                names = a.astype(str)
            continue
        if a.dtype.kind not in "fiub" or a.ndim not in (1, 2):
            continue
        low = k.lower()
        if low == "x":
            xs[""] = a.astype(float)
        elif low.startswith("x_"):
            xs[k[2:]] = a.astype(float)
        elif low.endswith("_x"):
            xs[k[:-2]] = a.astype(float)
        elif low.startswith("y_"):
            ys[k[2:]] = a.astype(float)
        elif low.startswith("steps_"):
            continue  # step labels of a sanity check, not a curve
        else:
            ys[k] = a.astype(float)
    return ys, xs, names


def _read_eval(path: Path, datasets: DatasetCache) -> Source:
    doc_path = path / "eval.json" if (path / "eval.json").is_file() else path / "compare.json"  # `eval compare`
    doc = _json(doc_path)
    if not isinstance(doc, dict):
        raise UsageError(f"{doc_path}: expected a JSON object")
    label = str(doc.get("command") or doc.get("metric") or doc.get("kind") or path.name)
    src = Source("eval", path, path.name if label == path.name else f"{path.name} ({label})", short=path.name)
    src.provenance = _provenance_of(doc)
    for key in ("settings", "config", "resolved"):
        if isinstance(doc.get(key), dict):
            src.configs[key] = json.dumps(doc[key], indent=2, ensure_ascii=False, default=str)
    cfg = _text(path / "config.yaml")
    if cfg:
        src.configs["config.yaml"] = cfg
    counts = {k: doc[k] for k in ("images", "n_images", "skipped", "n_skipped", "invalid") if k in doc}
    if isinstance(doc.get("counts"), dict):
        counts.update(doc["counts"])
    if counts:
        src.provenance["counts"] = counts
    src.results = doc
    per_image = path / "per_image.csv"
    items = _read_per_image(per_image, src, datasets, _metric_names(doc)) if per_image.is_file() else []
    if str(doc.get("command")) in STORE_COMMANDS:
        items = []  # rows are store ids without pictures: the scores stay in per_image.csv, not in the gallery
    curves_path = path / "curves.npz"
    if curves_path.is_file():
        try:
            with np.load(curves_path, allow_pickle=False) as z:
                ys, xs, names = _curve_keys(z)
                src.ticks = _step_names(z)
        except Exception as exc:  # noqa: BLE001
            src.warnings.append(f"{src.label}: curves.npz unreadable ({type(exc).__name__})")
            ys, xs, names = {}, {}, None
        ok_items = [it for it in items if it.info.get("status", "ok") == "ok"]
        by_key: dict[str, list[Item]] = {}
        for it in ok_items:
            by_key.setdefault(it.key, []).append(it)
        for name, y in ys.items():
            x = xs.get(name, xs.get(""))
            src.curves[name] = (x, y)
            if y.ndim != 2:
                continue
            if y.shape[0] == len(ok_items):  # rows follow the ok rows of per_image.csv (metrics.results)
                rows = list(enumerate(ok_items))
            elif names is not None and len(names) == y.shape[0]:
                rows = [(i, by_key[row_key(n)][0]) for i, n in enumerate(names) if row_key(n) in by_key]
            else:
                src.warnings.append(f"{src.label}: curves.npz '{name}' has {y.shape[0]} rows for {len(ok_items)} "
                                    "images and no names; per-image curves not shown")
                continue
            for i, it in rows:
                xi = x[i] if x is not None and x.ndim == 2 else (x if x is not None else np.linspace(0, 1, y.shape[1]))
                it.curves.append((name, np.asarray(xi, float), y[i]))
    band = (doc.get("extra") or {}).get("band") if isinstance(doc.get("extra"), dict) else None
    if isinstance(band, dict):  # eval sanity: the random-pair pass band of each similarity
        for name in src.curves:
            for sim, value in band.items():
                if name.startswith("sim_") and name.endswith(f"_{sim}") and _finite(value) is not None:
                    src.bands[name] = float(value)
    _attach_masks(doc, items)
    src.items = items
    return src


def _attach_masks(doc: dict[str, Any], items: list[Item]) -> None:
    """`eval localization --masks DIR`: find each image's mask in DIR by stem (``<stem>.*`` or ``<stem>_mask.*``)."""
    settings = doc.get("settings") if isinstance(doc.get("settings"), dict) else {}
    ref = doc.get("masks") or settings.get("masks")
    if not isinstance(ref, str) or not Path(ref).is_dir():
        return
    folder = Path(ref)
    files: dict[str, Path] = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.suffix.lower() in (".png", ".npy", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg"):
            stem = f.stem[:-5] if f.stem.endswith("_mask") else f.stem
            files.setdefault(stem, f)
    for it in items:
        if it.mask is None and it.key in files:
            it.mask = _mask_file(files[it.key])
