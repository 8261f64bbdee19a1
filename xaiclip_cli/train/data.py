"""Training data: split CSVs of PNG slices, MedMNIST npz, toy cells, image folders or CSV manifests, as batched
datasets plus on-device augmentation.

Augmentation is written by hand on whole batches (flip + rotation via ``affine_grid``) because torchvision's
transforms draw one random parameter per call: per-sample draws on a batch keep the loader cheap and GPU-friendly.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xaiclip_cli.errors import UsageError
from xaiclip_cli.train.split import read_split_csv

SPLITS = ("train", "val", "test")


class SplitData(torch.utils.data.Dataset):
    """One split; ``ds[list_of_indices]`` returns (uint8 images [B,C,H,W], labels, indices)."""

    labels: np.ndarray
    patient_ids: list[str]
    hospitals: list[str]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, indices: list[int]) -> torch.Tensor:  # pragma: no cover - abstract
        """uint8 images [B,C,H,W] for ``indices``."""
        raise NotImplementedError

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = list(indices)
        return self.load(idx), torch.as_tensor(self.labels[idx]), torch.as_tensor(idx)


class ArraySplit(SplitData):
    """Images held in memory as uint8 NHWC (MedMNIST, toy cells)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, prefix: str) -> None:
        if images.ndim == 3:
            images = images[..., None]
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        self.labels = labels
        self.patient_ids = [f"{prefix}-{i}" for i in range(len(labels))]
        self.hospitals = [prefix] * len(labels)
        self.paths = [""] * len(labels)

    def load(self, indices: list[int]) -> torch.Tensor:
        return self.images[indices]


class FileSplit(SplitData):
    """PNG slices listed in a split CSV, read with PIL and resized to the model size."""

    def __init__(self, rows: list[dict[str, Any]], image_size: int, in_chans: int) -> None:
        self.paths = [str(r["image_path"]) for r in rows]
        self.labels = np.asarray([int(r["label"]) for r in rows], dtype=np.int64)
        self.patient_ids = [str(r["patient_id"]) for r in rows]
        self.hospitals = [str(r.get("hospital", "")) for r in rows]
        self.size = image_size
        self.mode = "L" if in_chans == 1 else "RGB"

    def load(self, indices: list[int]) -> torch.Tensor:
        from PIL import Image

        out = []
        for i in indices:
            with Image.open(self.paths[i]) as im:
                im = im.convert(self.mode)
                if im.size != (self.size, self.size):
                    im = im.resize((self.size, self.size), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
            out.append(arr[..., None] if arr.ndim == 2 else arr)
        return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).copy())


@dataclass
class FitData:
    """The three splits plus what the model needs to know about the labels."""

    splits: dict[str, SplitData]
    num_classes: int
    class_names: list[str]
    multi_label: bool = False
    description: dict[str, Any] = field(default_factory=dict)


def _quiet_medmnist_info() -> dict[str, Any]:
    # medmnist prints a banner on import; stdout carries data only.
    with contextlib.redirect_stdout(io.StringIO()):
        import medmnist

    return medmnist.INFO


def _call_open_source(ref: str, size: int | None, root: Path | None) -> Any:
    """Open a data source through data/refs.py when that module exists (else None)."""
    try:
        from xaiclip_cli.data.refs import open_source  # type: ignore[import-not-found]
    except ImportError:
        return None
    params = inspect.signature(open_source).parameters
    kwargs: dict[str, Any] = {}
    for key, value in (("size", size), ("data_root", root), ("root", root)):
        if key in params and value is not None:
            kwargs[key] = value
    with contextlib.redirect_stdout(io.StringIO()):
        return open_source(ref, **kwargs)


def _arrays_from_source(src: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, n in src.split_sizes().items():
        if split not in SPLITS or n == 0:
            continue
        if hasattr(src, "images") and hasattr(src, "labels"):  # npz-backed sources read whole splits at once
            out[split] = (np.asarray(src.images(split)), np.asarray(src.labels(split)))
            continue
        samples = src.get_many(split, list(range(n)))
        out[split] = (np.stack([s.image for s in samples]), np.asarray([s.label for s in samples]))
    return out


def _medmnist_npz(flag: str, size: int | None, root: Path | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    root = Path(root) if root else Path.home() / ".medmnist"
    name = f"{flag}.npz" if size in (None, 28) else f"{flag}_{size}.npz"
    path = root / name
    if not path.is_file():
        raise UsageError(f"MedMNIST file {path} not found; pass --data-root with {name} (and --size)")
    with np.load(path) as npz:
        return {s: (npz[f"{s}_images"], npz[f"{s}_labels"]) for s in SPLITS if f"{s}_images" in npz}


def split_csv_paths(split_dir: str | Path, modality: str) -> dict[str, Path]:
    """The split CSVs of one modality (``{split}_{modality}.csv``); train and val must exist, test is optional."""
    out: dict[str, Path] = {}
    for s in SPLITS:
        path = Path(split_dir) / f"{s}_{modality}.csv"
        if not path.is_file():
            if s == "test":
                continue
            raise UsageError(f"split CSV {path} not found; run `xaiclip train split` or pass --split-dir")
        out[s] = path
    return out

def load_fit_data(
    source: str,
    split_dir: Path,
    modality: str | None,
    image_size: int,
    in_chans: int,
    size: int | None = None,
    data_root: Path | None = None,
) -> FitData:
    """Build the train/val/test splits of ``source`` ('splits', 'medmnist:<flag>' or 'toycells')."""
    if source == "splits":
        if not modality:
            raise UsageError("fit on split CSVs needs --modality (e.g. A)")
        splits: dict[str, SplitData] = {
            s: FileSplit(read_split_csv(path), image_size, in_chans)
            for s, path in split_csv_paths(split_dir, modality).items()
        }
        labels = np.concatenate([d.labels for d in splits.values()])
        n_cls = max(2, int(labels.max()) + 1) if len(labels) else 2
        return FitData(splits, n_cls, [f"grade{k}" for k in range(n_cls)],
                       description={"kind": "splits", "split_dir": str(split_dir), "modality": modality})
    src = _call_open_source(source, size, data_root)
    if source.startswith("medmnist:"):
        flag = re.sub(r"_\d+$", "", Path(source.split(":", 1)[1]).stem.lower())
        arrays = _arrays_from_source(src) if src is not None else _medmnist_npz(flag, size, data_root)
        info = _quiet_medmnist_info().get(flag, {})
        names = [info["label"][k] for k in sorted(info["label"], key=int)] if info.get("label") else []
        multi = "multi-label" in str(info.get("task", ""))
        desc = {"kind": "medmnist", "flag": flag, "size": size or 28, "task": info.get("task")}
        return _array_data(arrays, names, multi, desc)
    if src is None:
        raise UsageError(f"--data {source} needs xaiclip_cli.data.refs, which is not installed")
    names = list(getattr(src.info(), "class_names", []) or [])
    desc = {"kind": source.split(":", 1)[0], "ref": source}
    if hasattr(src, "images") and hasattr(src, "labels"):
        return _array_data(_arrays_from_source(src), names, False, desc)
    return _file_data(src, names, image_size, in_chans, desc)


def _source_labels(src: Any, split: str) -> tuple[list[str], list[int]]:
    """(paths, labels) of one split of a folder or CSV-manifest source, without decoding the images."""
    if hasattr(src, "rows"):  # CsvSource
        rows = src.rows(split)
        return [str(r.path) for r in rows], [int(r.label) for r in rows]
    items = getattr(src, "_items", None)  # FolderSource keeps (path, label) per split; no public label accessor
    if isinstance(items, dict):
        return [str(p) for p, _ in items.get(split, [])], [int(lab) for _, lab in items.get(split, [])]
    samples = src.get_many(split, list(range(src.split_sizes()[split])))
    return [str(s.path or "") for s in samples], [int(s.label) for s in samples]


def _file_data(src: Any, names: list[str], image_size: int, in_chans: int, desc: dict[str, Any]) -> FitData:
    """Folder/CSV sources: image files read (and resized) per batch, one 'patient' per image."""
    splits: dict[str, SplitData] = {}
    for split, n in src.split_sizes().items():
        if split not in SPLITS or n == 0:
            continue
        paths, labels = _source_labels(src, split)
        if any(lab < 0 for lab in labels):
            raise UsageError(f"data {desc['ref']}: {split} has unlabelled images; training needs a class for each")
        rows = [{"image_path": p, "label": lab, "patient_id": f"{split}-{i}", "hospital": split}
                for i, (p, lab) in enumerate(zip(paths, labels, strict=True))]
        splits[split] = FileSplit(rows, image_size, in_chans)
    if "train" not in splits or "val" not in splits:
        raise UsageError(f"data {desc['ref']} has no train and val splits (folder: train/ and val/ sub-folders; "
                         "csv: split column values train and val)")
    n_cls = max(len(names), max(int(d.labels.max()) for d in splits.values()) + 1, 2)
    return FitData(splits, n_cls, names or [str(k) for k in range(n_cls)], False, desc)


def _array_data(arrays: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str], multi: bool,
                desc: dict[str, Any]) -> FitData:
    splits: dict[str, SplitData] = {}
    for s, (images, labels) in arrays.items():
        labels = np.asarray(labels)
        if multi:
            labels = labels.astype(np.float32)
        else:
            labels = labels.reshape(len(labels), -1)[:, 0].astype(np.int64)
        splits[s] = ArraySplit(np.asarray(images, dtype=np.uint8), labels, s)
    if "train" not in splits or "val" not in splits:
        raise UsageError(f"data {desc} has no train and val splits")
    if multi:
        n_cls = splits["train"].labels.shape[1]
    else:
        n_cls = max(len(names), int(max(int(d.labels.max()) for d in splits.values() if len(d))) + 1, 2)
    names = names or [str(k) for k in range(n_cls)]
    return FitData(splits, n_cls, names, multi, desc)


def _rotation_grid(angles_deg: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    rad = angles_deg * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(rad)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    return F.affine_grid(theta, list(shape), align_corners=False)


def prepare_batch(
    images: torch.Tensor,
    image_size: int,
    in_chans: int,
    mean: list[float],
    std: list[float],
    train: bool = False,
    hflip: float = 0.0,
    rotation: float = 0.0,
    generator: torch.Generator | None = None,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """uint8 [B,C,H,W] -> float normalised [B,in_chans,S,S], with per-sample flip/rotation when ``train``.

    ``interpolation`` resizes to ``image_size``: bilinear (antialiased when shrinking) or nearest (MedMNIST "(224)").
    """
    x = images.float().div_(255.0)
    c = x.shape[1]
    if c != in_chans:
        if c == 1:
            x = x.expand(-1, in_chans, -1, -1)
        elif c == 3 and in_chans == 1:
            w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
            x = (x * w).sum(1, keepdim=True)
        else:
            raise UsageError(f"images have {c} channels but data.in_chans is {in_chans}")
    if x.shape[-2:] != (image_size, image_size) and interpolation == "nearest":
        x = F.interpolate(x, size=(image_size, image_size), mode="nearest")
    elif x.shape[-2:] != (image_size, image_size):
        up = x.shape[-1] < image_size
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=not up)
    if train and (hflip > 0 or rotation > 0):
        b = x.shape[0]
        if hflip > 0:
            flip = (torch.rand(b, generator=generator) < hflip).to(x.device)
            x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
        if rotation > 0:
            angles = (torch.rand(b, generator=generator) * 2 - 1) * rotation
            grid = _rotation_grid(angles.to(x.device, x.dtype), x.shape)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s
