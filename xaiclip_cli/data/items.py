"""Image inputs of a per-image job (cam run, attrib run): files, folders, globs and datasets → ordered input items.

Every item knows how to load its pixels, where its outputs go (``subdir``/``stem``, unique within the job and
stable: derived from the source file's path, never from a position when a file exists) and what every sidecar
records about its source (``source``: path, dataset, split, index).
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xaiclip_cli.data.formats import IMAGE_EXTENSIONS as IMAGE_SUFFIXES
from xaiclip_cli.data.formats import is_volume_name, volume_message
from xaiclip_cli.errors import UsageError


@dataclass
class InputItem:
    """One image of a job: ``load()`` → uint8 HWC, output sub-folder and stem, source record for sidecars."""

    load: Callable[[], Any]
    subdir: Path
    stem: str
    source: dict[str, Any] = field(default_factory=dict)
    label: int | None = None

    @property
    def rel_stem(self) -> str:
        """``subdir/stem`` in POSIX form (the item's key within a job)."""
        return (self.subdir / self.stem).as_posix()


def expand_images(entries: Sequence[Path | str], recursive: bool = False, flag: str = "--images"
                  ) -> list[tuple[Path, Path]]:
    """(image file, output sub-folder) pairs for files, folders and globs; folders mirror their tree so that stems
    do not collide. Each bad entry raises a one-line UsageError naming it."""
    out: list[tuple[Path, Path]] = []
    for raw in entries:
        entry = Path(raw)
        text = str(raw)
        if any(c in text for c in "*?[") and not entry.exists():
            hits = sorted(Path(p) for p in glob.glob(text, recursive=recursive))
            files = [p for p in hits if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise UsageError(f"{flag} {text}: the pattern matches no image files")
            out.extend((p, Path()) for p in files)
        elif entry.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(p for p in entry.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            volumes = sorted(p for p in entry.glob(pattern) if p.is_file() and is_volume_name(p))
            if volumes:
                raise UsageError(f"{flag} {entry}: {volume_message(volumes[0])}")
            if not files:
                raise UsageError(f"{flag} {entry}: no image files in this folder (try --recursive)")
            out.extend((p, p.parent.relative_to(entry)) for p in files)
        elif entry.is_file():
            if is_volume_name(entry):
                raise UsageError(f"{flag} {volume_message(entry)}")
            out.append((entry, Path()))
        else:
            raise UsageError(f"{flag} {entry}: no such file or folder")
    return out


def unique_stems(pairs: Sequence[tuple[Path, Path]]) -> list[str]:
    """Output stems for (file, sub-folder) pairs: the file stem, plus ``_<ext>`` when two files of one sub-folder
    share a stem (``a.png``/``a.jpg`` → ``a_png``/``a_jpg``), plus ``_<n>`` if still taken (same file twice)."""
    count: dict[tuple[Path, str], int] = {}
    for p, sub in pairs:
        count[(sub, p.stem)] = count.get((sub, p.stem), 0) + 1
    used: set[tuple[Path, str]] = set()
    out = []
    for p, sub in pairs:
        stem = p.stem if count[(sub, p.stem)] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}"
        base, n = stem, 1
        while (sub, stem) in used:
            n += 1
            stem = f"{base}_{n}"
        used.add((sub, stem))
        out.append(stem)
    return out


def image_items(entries: Sequence[Path | str], recursive: bool = False, limit: int | None = None,
                flag: str = "--images", intensity: Any = None) -> list[InputItem]:
    """Items for ``--images`` files, folders and globs (sorted per entry; at most ``limit``). Each load decodes
    through the one shared decoder and records its intensity mapping in the item's source (the sidecar block)."""
    pairs = expand_images(entries, recursive, flag)
    if limit:
        pairs = pairs[:limit]
    stems = unique_stems(pairs)
    items = []
    for (p, sub), stem in zip(pairs, stems, strict=True):
        info: dict[str, Any] = {"path": str(p)}
        items.append(InputItem(_file_loader(p, intensity, info), sub, stem, info))
    return items


def _file_loader(path: Path, intensity: Any, info: dict[str, Any]) -> Callable[[], Any]:
    def load() -> Any:
        from xaiclip_cli.data.imageio import read_image

        image, info["intensity"] = read_image(path, intensity)  # recorded in the sidecar's `image` block
        return image
    return load


def _sample_loader(source: Any, split: str, i: int, info: dict[str, Any]) -> Callable[[], Any]:
    def load() -> Any:
        sample = source.get(split, i)
        if getattr(sample, "intensity", None) is not None:  # how a file's values became uint8
            info["intensity"] = sample.intensity
        return sample.image
    return load


def source_files(source: Any, split: str) -> tuple[list[Path], Path | None] | None:
    """The files of a dataset split in index order and the folder they are relative to, when the source is backed by
    image files (folder:, csv:); None for array datasets (toycells, medmnist)."""
    if hasattr(source, "paths") and hasattr(source, "root"):
        root = Path(source.root)
        d = root / split if getattr(source, "split_folders", False) else root
        return list(source.paths(split)), d
    if hasattr(source, "rows") and hasattr(source, "csv_path"):
        return [Path(r.path) for r in source.rows(split)], Path(source.csv_path).parent
    return None


def dataset_items(source: Any, ref: str, split: str, limit: int | None = None) -> list[InputItem]:
    """Items of a dataset split: file-backed sources are named after their files (``<split>/<rel dir>/<stem>``, the
    path recorded), array datasets after their position (``<split>/<split>_<index:05d>``)."""
    n = source.split_sizes().get(split, 0)
    if n == 0:
        raise UsageError(f"--dataset {ref}: split {split!r} is empty")
    count = min(n, limit or n)
    files = source_files(source, split)
    items: list[InputItem] = []
    if files is None:
        for i in range(count):
            info: dict[str, Any] = {"dataset": ref, "split": split, "index": i}
            items.append(InputItem(_sample_loader(source, split, i, info), Path(split), f"{split}_{i:05d}", info))
        return items
    paths, root = files
    pairs = []
    for p in paths[:count]:
        try:
            rel = p.resolve().relative_to(root.resolve()).parent if root is not None else Path()
        except ValueError:  # a CSV row outside the CSV's folder: no sub-folder
            rel = Path()
        pairs.append((p, Path(split) / rel))
    stems = unique_stems(pairs)
    for i, ((p, sub), stem) in enumerate(zip(pairs, stems, strict=True)):
        info = {"path": str(p), "dataset": ref, "split": split, "index": i}
        items.append(InputItem(_sample_loader(source, split, i, info), sub, stem, info))
    return items
