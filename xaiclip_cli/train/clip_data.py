"""Data for CLIP training: labelled sources + prompts, or image–caption pairs, as uint8 tensors and prompt tables.

Labelled data: each class k has a list of prompts (every template filled with the class name, plus optional
class-specific captions from a prompt set); training draws one prompt per sample, zero-shot evaluation averages
the normalised embeddings of all prompts of a class. Pairs data: one caption per image, exact-pair retrieval.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import inspect
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xaiclip_cli.data.base import SPLITS, DataSource
from xaiclip_cli.errors import UsageError

DEFAULT_TEMPLATES = ["a photo of {label}"]


def format_prompt(template: str, label: str) -> str:
    """Fill ``{label}`` (or ``{}`` / ``{name}``) of a template with a class name."""
    if "{label}" in template or "{name}" in template:
        return template.replace("{label}", label).replace("{name}", label)
    if "{}" in template:
        return template.replace("{}", label)
    return f"{template} {label}".strip()


@dataclass
class PromptSet:
    """Class names, templates and optional per-class captions (a prompt-set YAML such as configs/toycells.yaml)."""

    labels: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    captions: dict[str, list[str]] = field(default_factory=dict)
    concepts: list[str] = field(default_factory=list)


def _names(value: Any) -> list[str]:
    """Labels given as a list of strings, a list of {name: ...} dicts, or an {index: name} mapping."""
    if isinstance(value, dict):
        return [str(value[k]) for k in sorted(value, key=lambda x: int(x) if str(x).isdigit() else str(x))]
    out = []
    for item in value or []:
        if isinstance(item, dict):
            out.append(str(item.get("name") or item.get("label") or next(iter(item.values()))))
        else:
            out.append(str(item))
    return out


def _flat_texts(value: Any) -> list[str]:
    if isinstance(value, dict):
        out: list[str] = []
        for v in value.values():
            out.extend(_flat_texts(v))
        return out
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            out.extend(_flat_texts(v))
        return out
    return [str(value)] if value is not None else []


def read_prompt_set(path: str | Path) -> PromptSet:
    """Read labels / templates / captions / concepts from a prompt-set YAML (unknown keys are ignored)."""
    import yaml

    from xaiclip_cli.resources import config_path

    p = config_path(path)  # a file, or a shipped prompt set by name from any folder (toycells, bloodmnist)
    if not p.is_file():
        raise UsageError(f"prompt set {path} not found (--prompts)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"prompt set {p}: invalid YAML") from exc
    if not isinstance(data, dict):
        raise UsageError(f"prompt set {p}: expected a mapping with labels/templates")
    caps = data.get("captions") or {}
    captions = {str(k): _flat_texts(v) for k, v in caps.items()} if isinstance(caps, dict) else {}
    templates = data.get("templates") or data.get("label_templates") or []
    concepts = _flat_texts(data.get("concepts"))
    # Concept prompts as the explainers will phrase them (so that a built vocabulary covers them).
    concept_texts = [format_prompt(str(t), c) for t in data.get("concept_templates") or [] for c in concepts]
    return PromptSet(labels=_names(data.get("labels")), templates=[str(t) for t in templates],
                     captions=captions, concepts=concepts + concept_texts)


@dataclass
class ClipSplit:
    """One split: uint8 images [N,C,H,W], labels [N] (labelled mode) or captions (pairs mode)."""

    images: torch.Tensor
    labels: torch.Tensor | None = None
    captions: list[str] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class ClipData:
    """Train/val/test splits plus the prompts of labelled data (``class_prompts[k]`` = prompts of class k)."""

    splits: dict[str, ClipSplit]
    class_names: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    class_prompts: list[list[str]] = field(default_factory=list)
    extra_texts: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        """True for labelled data (zero-shot evaluation), False for caption pairs."""
        return bool(self.class_prompts)

    def all_texts(self) -> list[str]:
        """Every text the model may see (for building a vocabulary)."""
        out = [t for ps in self.class_prompts for t in ps] + list(self.extra_texts)
        for s in self.splits.values():
            out.extend(s.captions or [])
        return out


def _to_uint8_nchw(images: list[np.ndarray] | np.ndarray, size: int, channels: int) -> torch.Tensor:
    """Stack HWC uint8 images as [N,C,size,size] uint8 (resizing with the backend's squash resize when needed)."""
    arr = images if isinstance(images, np.ndarray) else None
    if arr is None and len({im.shape for im in images}) == 1:
        arr = np.stack(images)
    if arr is not None and arr.ndim == 3:
        arr = arr[..., None]
    if arr is not None and arr.dtype == np.uint8 and arr.shape[1:3] == (size, size):
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
        return _match_channels(t, channels)
    from xaiclip_cli.models.preprocess import preprocess_images

    # Mixed sizes: resize once to the training size and keep uint8 (quantisation error < 1/255 per pixel).
    out = []
    seq = list(arr) if arr is not None else list(images)
    for lo in range(0, len(seq), 256):
        x = preprocess_images(seq[lo:lo + 256], size, [0.0] * channels, [1.0] * channels, channels=channels)
        out.append((x * 255.0).round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out) if out else torch.zeros(0, channels, size, size, dtype=torch.uint8)


def _match_channels(t: torch.Tensor, channels: int) -> torch.Tensor:
    if t.shape[1] == channels:
        return t
    if t.shape[1] == 1 and channels == 3:
        return t.expand(-1, 3, -1, -1).contiguous()
    if t.shape[1] == 4 and channels == 3:
        return t[:, :3].contiguous()
    if t.shape[1] == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (t.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise UsageError(f"cannot feed {t.shape[1]}-channel images to a {channels}-channel tower (--in-chans)")


def normalise_batch(u8: torch.Tensor, size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 [B,C,H,W] → float normalised [B,C,size,size], matching models/preprocess.py (bicubic squash, clamp)."""
    x = u8.float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def _subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def open_labelled_source(data: str, data_root: Path | None = None) -> DataSource:
    """Open 'toycells', or anything ``xaiclip_cli.data.refs.open_source`` understands ('medmnist:<flag>', CSV)."""
    try:
        from xaiclip_cli.data.refs import open_source  # type: ignore[import-not-found]
    except ImportError:
        open_source = None
    if open_source is not None:
        params = inspect.signature(open_source).parameters
        kwargs = {k: data_root for k in ("data_root", "root") if k in params and data_root is not None}
        with contextlib.redirect_stdout(io.StringIO()):  # medmnist prints a banner on import
            return open_source(data, **kwargs)
    if data == "toycells":
        from xaiclip_cli.data.toycells import ToyCellsSource

        return ToyCellsSource(Path(data_root) / "toycells_64.npz" if data_root else None)
    raise UsageError(f"unknown data {data!r} (use toycells, medmnist:<flag>, or --pairs CSV)")


def data_digest(splits: dict[str, ClipSplit]) -> str:
    """SHA-256 of the pixels and labels actually trained and evaluated on (split order, after subsetting and
    resizing): unlike the file MD5 it ignores arrays training never reads (masks) and changes with a subset."""
    h = hashlib.sha256()
    for name in sorted(splits):
        sp = splits[name]
        h.update(name.encode())
        h.update(np.ascontiguousarray(sp.images.detach().cpu().numpy()).tobytes())
        if sp.labels is not None:
            h.update(np.ascontiguousarray(sp.labels.detach().cpu().numpy().astype(np.int64)).tobytes())
    return h.hexdigest()


def labelled_data(
    source: DataSource,
    *,
    image_size: int,
    in_chans: int,
    label_names: list[str] | None = None,
    templates: list[str] | None = None,
    prompt_set: PromptSet | None = None,
    max_train: int | None = None,
    max_eval: int | None = None,
    seed: int = 0,
) -> ClipData:
    """Labelled source → ClipData with per-class prompts (templates × class names + prompt-set captions)."""
    ps = prompt_set or PromptSet()
    names = list(label_names or ps.labels or source.info().class_names)
    tmpls = list(templates or ps.templates or DEFAULT_TEMPLATES)
    splits: dict[str, ClipSplit] = {}
    n_cls = 0
    for split, n in source.split_sizes().items():
        if split not in SPLITS or n == 0:
            continue
        idx = _subset(n, max_train if split == "train" else max_eval, seed)
        samples = source.get_many(split, [int(i) for i in idx])
        labels = torch.tensor([int(np.asarray(s.label).reshape(-1)[0]) for s in samples], dtype=torch.long)
        splits[split] = ClipSplit(_to_uint8_nchw([s.image for s in samples], image_size, in_chans), labels=labels)
        n_cls = max(n_cls, int(labels.max()) + 1 if len(labels) else 0)
    if "train" not in splits:
        raise UsageError(f"data {source.info().ref}: no training split")
    if not names:
        names = [f"class {k}" for k in range(n_cls)]
    if len(names) < n_cls:
        raise UsageError(f"{len(names)} label names for {n_cls} classes; give one --label-names entry per class")
    prompts = [[format_prompt(t, name) for t in tmpls] + list(ps.captions.get(name, [])) for name in names]
    info = source.info()
    return ClipData(splits, class_names=names, templates=tmpls, class_prompts=prompts, extra_texts=list(ps.concepts),
                    info={"kind": info.kind, "ref": info.ref, "md5": info.md5, "data_sha256": data_digest(splits),
                          # The name only: an export must not carry the training machine's folders.
                          "file": Path(info.file).name if info.file else None})


def pairs_data(
    csv_path: Path,
    *,
    image_size: int,
    in_chans: int,
    path_key: str = "path",
    caption_key: str = "caption",
    val_fraction: float = 0.1,
    seed: int = 0,
    max_train: int | None = None,
    max_eval: int | None = None,
) -> ClipData:
    """Pairs CSV (path,caption[,split]) → ClipData; without a split column a seeded 10% goes to val."""
    from PIL import Image

    p = Path(csv_path)
    if not p.is_file():
        raise UsageError(f"pairs CSV {p} not found (--pairs)")
    with open(p, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UsageError(f"pairs CSV {p}: no rows")
    for key in (path_key, caption_key):
        if key not in rows[0]:
            raise UsageError(f"pairs CSV {p}: missing column {key!r} (columns: {', '.join(rows[0])})")
    if "split" in rows[0]:
        split_of = [r["split"].strip() or "train" for r in rows]
    else:
        order = np.random.default_rng(seed).permutation(len(rows))
        n_val = max(1, int(round(val_fraction * len(rows)))) if len(rows) > 2 else 0
        split_of = ["train"] * len(rows)
        for i in order[:n_val]:
            split_of[int(i)] = "val"
    splits: dict[str, ClipSplit] = {}
    for split in SPLITS:
        chosen = [r for r, s in zip(rows, split_of, strict=True) if s == split]
        if not chosen:
            continue
        keep = _subset(len(chosen), max_train if split == "train" else max_eval, seed)
        chosen = [chosen[int(i)] for i in keep]
        images = []
        for r in chosen:
            ip = (p.parent / r[path_key]).resolve() if not Path(r[path_key]).is_absolute() else Path(r[path_key])
            try:
                with Image.open(ip) as im:
                    images.append(np.asarray(im.convert("RGB" if in_chans == 3 else "L")))
            except OSError as exc:
                raise UsageError(f"pairs CSV {p}: cannot read image {ip}") from exc
        splits[split] = ClipSplit(_to_uint8_nchw(images, image_size, in_chans),
                                  captions=[str(r[caption_key]) for r in chosen])
    if "train" not in splits:
        raise UsageError(f"pairs CSV {p}: no training rows")
    return ClipData(splits, info={"kind": "pairs", "ref": str(p)})


def shift_batch(px: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Translate each image of [B,C,H,W] by integer ``shifts`` [B,2] = (dy, dx) pixels, reflect-padding the edges.

    Content moves by (dy, dx): ``out[..., i, j] = px[..., reflect(i - dy), reflect(j - dx)]`` (CIFAR-style
    pad-and-crop, so the class evidence is never cut off by a shift smaller than its margin).
    """
    if px.shape[0] == 0:
        return px
    pad = int(shifts.abs().max())
    if pad == 0:
        return px
    h, w = px.shape[-2:]
    if pad >= min(h, w):
        raise ValueError(f"shift {pad} must be smaller than the image side {min(h, w)}")
    padded = F.pad(px, (pad, pad, pad, pad), mode="reflect")
    out = torch.empty_like(px)
    for b, (dy, dx) in enumerate(shifts.tolist()):
        out[b] = padded[b, :, pad - dy:pad - dy + h, pad - dx:pad - dx + w]
    return out
