"""CSV-manifest source: a header ``path,label,split[,text][,mask]``, one image per row, validated with line numbers.

Paths (image and mask) are relative to the CSV's folder unless absolute. A label is an integer class id or a
class name: a manifest uses one kind throughout. With names, class names are the sorted distinct names unless
``class_names`` is given (then names must be in it, and integers index it); with integers, class names are the
given ones or ``"0".."max"``. An empty label means unlabelled (-1). Rows keep file order within each split.
Every referenced file must exist when the manifest is opened; images are decoded on access.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xaiclip_cli.data.base import SPLITS, DataSource, Sample, SourceInfo
from xaiclip_cli.data.formats import is_volume_name, parse_intensity, volume_message
from xaiclip_cli.data.imageio import decode_image, load_mask
from xaiclip_cli.errors import UsageError, XaiclipError

REQUIRED_COLUMNS = ("path", "label", "split")
OPTIONAL_COLUMNS = ("text", "mask")


@dataclass(frozen=True)
class ManifestRow:
    """One validated manifest row (``line`` is the 1-based line number in the CSV, for messages)."""

    path: Path
    label: int
    split: str
    text: str | None
    mask: Path | None
    line: int


def _parse_int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def read_manifest(csv_path: str | Path, class_names: list[str] | None = None) -> tuple[list[ManifestRow], list[str]]:
    """Parse and validate a manifest; return its rows and the class names (UsageError ``file:line: ...``)."""
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise UsageError(f"{csv_path}: CSV manifest not found")
    base = csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            raw = [(reader.line_num, rec) for rec in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"{csv_path}: not a readable UTF-8 CSV ({exc})") from None
    if not header:
        raise UsageError(f"{csv_path}: empty file; expected a header line path,label,split[,text][,mask]")
    cols = [c.strip().lower() for c in header]
    unknown = [c for c in cols if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if unknown or missing or len(set(cols)) != len(cols):
        why = "".join(f"; {k} {','.join(v)}" for k, v in (("unknown", unknown), ("missing", missing)) if v)
        raise UsageError(
            f"{csv_path}:1: header {','.join(cols)} is invalid (need path,label,split; optional text,mask{why})"
        )
    pos = {c: i for i, c in enumerate(cols)}
    records: list[tuple[int, dict[str, str]]] = []
    for line, rec in raw:
        if not rec or all(not f.strip() for f in rec):
            continue  # blank lines are allowed
        if len(rec) != len(cols):
            raise UsageError(f"{csv_path}:{line}: {len(rec)} fields, the header has {len(cols)}")
        records.append((line, {c: rec[i].strip() for c, i in pos.items()}))
    if not records:
        raise UsageError(f"{csv_path}: no rows after the header")

    labels = [(line, r["label"]) for line, r in records if r["label"] != ""]
    ints = [_parse_int(v) for _, v in labels]
    names = list(class_names) if class_names else None
    if names is not None:
        index = {n: i for i, n in enumerate(names)}
    elif all(i is not None for i in ints):
        top = max((i for i in ints if i is not None), default=-1)
        names = [str(i) for i in range(top + 1)]
        index = {}
    else:
        mixed = next((line for (line, _), i in zip(labels, ints, strict=True) if i is not None), None)
        if mixed is not None:
            raise UsageError(f"{csv_path}:{mixed}: integer label among class-name labels; use one kind throughout")
        names = sorted({v for _, v in labels})
        index = {n: i for i, n in enumerate(names)}

    rows: list[ManifestRow] = []
    for line, r in records:
        where = f"{csv_path}:{line}"
        if not r["path"]:
            raise UsageError(f"{where}: empty path")
        path = Path(r["path"]).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise UsageError(f"{where}: image {path} not found")
        if is_volume_name(path):
            raise UsageError(f"{where}: {volume_message(path)}")
        split = r["split"].lower()
        if split not in SPLITS:
            raise UsageError(f"{where}: split {r['split']!r} is not one of {', '.join(SPLITS)}")
        value = r["label"]
        if value == "":
            label = -1
        elif value in index:
            label = index[value]
        elif (as_int := _parse_int(value)) is not None:
            label = as_int
            if not 0 <= label < len(names):
                raise UsageError(f"{where}: label {label} out of range 0..{len(names) - 1}")
        else:
            raise UsageError(f"{where}: unknown class name {value!r} (known: {', '.join(names)})")
        mask = None
        if r.get("mask"):
            mask = Path(r["mask"]).expanduser()
            mask = mask if mask.is_absolute() else base / mask
            if not mask.is_file():
                raise UsageError(f"{where}: mask {mask} not found")
        rows.append(ManifestRow(path, label, split, r.get("text") or None, mask, line))
    return rows, names


class CsvSource(DataSource):
    """Images listed in a CSV manifest, with optional per-row caption text and mask file."""

    def __init__(self, csv_path: str | Path, class_names: list[str] | None = None,
                 intensity: str | None = None) -> None:
        self.csv_path = Path(csv_path).expanduser()
        try:
            self.intensity = parse_intensity(intensity)
        except ValueError as exc:
            raise UsageError(f"--intensity: {exc}") from None
        rows, self.class_names = read_manifest(self.csv_path, class_names)
        self._rows = {s: [r for r in rows if r.split == s] for s in SPLITS}

    def split_sizes(self) -> dict[str, int]:
        """Rows per split."""
        return {s: len(self._rows[s]) for s in SPLITS}

    def rows(self, split: str) -> list[ManifestRow]:
        """The validated rows of a split in index order."""
        return list(self._rows[split])

    def get(self, split: str, index: int) -> Sample:
        """Decode one row's image (RGB uint8) and mask (uint8 0/1, same height and width)."""
        if split not in SPLITS:
            raise UsageError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        rows = self._rows[split]
        if not 0 <= index < len(rows):
            raise UsageError(f"{self.csv_path}: index {index} out of range for split {split!r} of size {len(rows)}")
        r = rows[index]
        decoded = decode_image(r.path, self.intensity)
        image = np.repeat(decoded.image, 3, axis=2) if decoded.image.shape[2] == 1 else decoded.image
        mask = None
        if r.mask is not None:
            mask = load_mask(r.mask)
            if mask.shape != image.shape[:2]:
                raise XaiclipError(
                    f"{self.csv_path}:{r.line}: mask {r.mask} is {mask.shape[1]}x{mask.shape[0]}, "
                    f"image is {image.shape[1]}x{image.shape[0]}"
                )
        return Sample(
            image=image, label=r.label, split=split, index=int(index), mask=mask, path=str(r.path), text=r.text,
            intensity=decoded.mapping,
        )

    def info(self) -> SourceInfo:
        """Provenance: the manifest file and class names."""
        return SourceInfo(
            kind="csv", ref=f"csv:{self.csv_path}", file=str(self.csv_path), class_names=list(self.class_names),
            extra={"split_sizes": self.split_sizes(), "intensity": self.intensity.spec()},
        )
