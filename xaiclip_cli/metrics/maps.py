"""Load explanation maps for eval: `cam run` npz + sidecar, `attrib` orders as rank maps, baseline/plain `.npy`.

Every map becomes a :class:`MapItem` with the image it explains (from its sidecar, else paired by file stem) and
its target text. Unreadable files become counted skips, never silent drops.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xaiclip_cli.errors import UsageError

_DATASET_STEM = re.compile(r"^(train|val|test)_(\d+)")


@dataclass
class MapItem:
    """One map to evaluate: key (unique name), the map (None when unreadable: ``reason``), provenance."""

    key: str
    kind: str  # cam | attrib | npy
    path: Path
    phi: np.ndarray | None
    sidecar: dict[str, Any] = field(default_factory=dict)
    image: dict[str, Any] = field(default_factory=dict)  # {"path": ...} or {"dataset", "split", "index"}
    stem: str = ""
    target_name: str | None = None
    target_index: int | None = None
    method: str | None = None
    reason: str = ""


def rank_map(labels: np.ndarray, order: np.ndarray) -> np.ndarray:
    """An attrib order as a map: the region at position i of k gets k − i (unselected regions 0), metrics.md §3.

    ``order`` indexes the regions' ids in ascending order (`smdl.regions.elements`)."""
    ids = np.unique(labels)
    k = int(order.size)
    out = np.zeros(labels.shape, dtype=np.float64)
    for i, e in enumerate(np.asarray(order).astype(np.int64).tolist()):
        if not 0 <= e < ids.size:
            raise ValueError(f"order entry {e} outside the {ids.size} regions")
        out[labels == ids[e]] = k - i
    return out


def _read_json(p: Path) -> dict[str, Any]:
    try:
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
    except (OSError, ValueError):
        return {}


def _image_of(side: dict[str, Any]) -> dict[str, Any]:
    img = side.get("image")
    if isinstance(img, dict) and img:
        return dict(img)
    for k in ("path", "image_path", "source"):
        v = side.get(k)
        if isinstance(v, str) and v:
            return {"path": v}
        if isinstance(v, dict) and v:
            return dict(v)
    return {}


def image_key(image: dict[str, Any], fallback: str) -> str:
    """The stem an image is known by in every output: file stem, else ``<split>_<index:05d>`` (as cam names it)."""
    if image.get("path"):
        return Path(str(image["path"])).stem
    if image.get("split") is not None and image.get("index") is not None:
        return f"{image['split']}_{int(image['index']):05d}"
    return fallback


def load_one(path: Path, root: Path) -> MapItem | None:
    """One file → MapItem (None for files that are not maps: figures, sidecars, markers)."""
    rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
    key = str(rel.with_suffix(""))
    side = _read_json(path.with_suffix(".json"))
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                names = set(z.files)
                if "map" in names:
                    kind, phi = "cam", np.asarray(z["map"], dtype=np.float64)
                elif {"labels", "order"} <= names:
                    kind, phi = "attrib", rank_map(np.asarray(z["labels"]), np.asarray(z["order"]))
                else:
                    return None
        elif path.suffix == ".npy":
            kind, phi = "npy", np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
        else:
            return None
    except (OSError, ValueError) as exc:
        return MapItem(key=key, kind="unreadable", path=path, phi=None, reason="unreadable",
                       sidecar={"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__})
    image = _image_of(side)
    item = MapItem(key=key, kind=kind, path=path, phi=phi, sidecar=side, image=image, stem=image_key(image, path.stem))
    item.method = side.get("method")
    if kind == "cam":
        item.target_name = side.get("target_name")
        item.target_index = side.get("target_index")
    elif kind == "attrib":
        item.method = item.method or "smdl"
        t = side.get("target")
        item.target_name = str(t) if t is not None and not isinstance(t, int) else path.parent.name
        if isinstance(t, int):
            item.target_index = t
        if not image and (side.get("path") or side.get("image")):
            item.image = _image_of(side)
        if "items" in rel.parts:
            item.stem = image_key(item.image, path.stem)
    else:  # baseline maps: maps/<method>/<target>/<stem>.npy
        parts = rel.parts
        if len(parts) >= 4 and parts[0] == "maps":
            item.method, item.target_name = parts[1], parts[2]
        item.target_name = item.target_name or side.get("target_name")
        item.target_index = side.get("target_index")
    return item


def collect(inputs: list[Path], limit: int | None = None) -> list[MapItem]:
    """Every map under the given files/folders (recursive, sorted by key; hidden and temporary files skipped)."""
    if not inputs:
        raise UsageError("no maps: give --maps FILE|DIR (cam run output, attrib OUT, or .npy maps)")
    check_attrib_configs([Path(p) for p in inputs if (Path(p) / "run.json").is_file()])
    items: list[MapItem] = []
    for p in inputs:
        p = Path(p)
        if not p.exists():
            raise UsageError(f"--maps {p}: no such file or folder")
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.suffix in (".npz", ".npy"))
        root = p.parent if p.is_file() else p
        for f in files:
            if any(part.startswith(".") for part in f.relative_to(root).parts):
                continue
            it = load_one(f, root)
            if it is not None:
                if len(inputs) > 1:
                    it.key = f"{p.name}/{it.key}"
                items.append(it)
    items.sort(key=lambda it: it.key)
    if not items:
        raise UsageError(f"no maps found under {', '.join(str(p) for p in inputs)} (.npz from cam/attrib or .npy)")
    return items[:limit] if limit else items


def dataset_index(stem: str) -> tuple[str, int] | None:
    """(split, index) from a dataset-style stem `test_00012...` (cam/attrib names for --dataset inputs)."""
    m = _DATASET_STEM.match(stem)
    return (m.group(1), int(m.group(2))) if m else None


def check_attrib_configs(folders: list[Path]) -> dict[str, Any]:
    """The shared attrib config of the folders' ``run.json`` (refuses folders whose configs differ, exit 2)."""
    from xaiclip_cli.metrics.bootstrap import check_comparable

    configs: list[tuple[Path, dict[str, Any]]] = []
    for d in folders:
        rj = Path(d) / "run.json"
        if rj.is_file():
            data = _read_json(rj)
            cfg = data.get("config", data)
            cfg = {k: v for k, v in cfg.items() if k not in ("output_dir", "out", "plan", "created_at", "images",
                                                              "dataset", "limit", "gpus", "device")}
            configs.append((Path(d), cfg))
    for d, cfg in configs[1:]:
        try:
            check_comparable(configs[0][1], cfg)
        except UsageError as exc:
            raise UsageError(f"{d}/run.json has a different attrib config than {configs[0][0]}/run.json "
                             f"({str(exc).split(': ', 1)[-1]})") from exc
    return configs[0][1] if configs else {}
