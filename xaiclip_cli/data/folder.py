"""Image-folder source: ``root/<class>/<image>``, or ``root/{train,val,test}/<class>/<image>`` for explicit splits.

Split rule: when ``root`` holds any of the folders ``train``, ``val``, ``test``, those are the splits (other
entries of ``root`` are ignored); otherwise every image belongs to one split, ``train`` by default (``split=``
changes it, e.g. ``test`` for a folder that is only explained). Class names are the sorted names of the class
folders across all splits; images lying directly in a split folder are unlabelled (label -1). Order is the
sorted relative path, so indices are deterministic. Images (DICOM included) are decoded on access by
``data.imageio`` with the source's ``intensity`` mapping and returned as RGB. Volume files (NIfTI, NRRD,
MetaImage) in the folder are refused when it is opened, not skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xaiclip_cli.data.base import SPLITS, DataSource, Sample, SourceInfo
from xaiclip_cli.data.formats import is_volume_name, parse_intensity, volume_message
from xaiclip_cli.data.imageio import decode_image, is_image_file
from xaiclip_cli.errors import UsageError


class FolderSource(DataSource):
    """Images under ``root`` grouped in class folders, optionally inside ``train``/``val``/``test`` folders."""

    def __init__(self, root: str | Path, split: str = "train", intensity: str | None = None) -> None:
        self.root = Path(root).expanduser()
        try:
            self.intensity = parse_intensity(intensity)
        except ValueError as exc:
            raise UsageError(f"--intensity: {exc}") from None
        if not self.root.is_dir():
            raise UsageError(f"{self.root}: image folder not found")
        if split not in SPLITS:
            raise UsageError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        split_dirs = {s: self.root / s for s in SPLITS if (self.root / s).is_dir()}
        self.split_folders = bool(split_dirs)
        if not split_dirs:
            split_dirs = {split: self.root}
        found: dict[str, list[tuple[Path, str | None]]] = {}
        for s, d in split_dirs.items():
            items: list[tuple[Path, str | None]] = []
            for entry in sorted(d.iterdir()):
                if entry.is_dir() and not entry.name.startswith("."):
                    items += [(f, entry.name) for f in sorted(entry.rglob("*")) if is_image_file(f)]
                elif is_image_file(entry):
                    items.append((entry, None))
            found[s] = sorted(items, key=lambda it: it[0].relative_to(d).as_posix())
        volumes = sorted(f for d in split_dirs.values() for f in d.rglob("*") if f.is_file() and is_volume_name(f))
        if volumes:
            more = f" (and {len(volumes) - 1} more)" if len(volumes) > 1 else ""
            raise UsageError(f"{volume_message(volumes[0])}{more}; move volumes out of {self.root}")
        self.class_names = sorted({c for items in found.values() for _, c in items if c is not None})
        index = {c: i for i, c in enumerate(self.class_names)}
        self._items = {
            s: [(p, -1 if c is None else index[c]) for p, c in found.get(s, [])] for s in SPLITS
        }
        if not any(self._items.values()):
            raise UsageError(f"{self.root}: no image files found (expected root/<class>/<image>.png or .jpg)")

    def split_sizes(self) -> dict[str, int]:
        """Images per split."""
        return {s: len(self._items[s]) for s in SPLITS}

    def get(self, split: str, index: int) -> Sample:
        """Decode one image (RGB uint8 HxWx3) with the source's intensity mapping."""
        if split not in SPLITS:
            raise UsageError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        items = self._items[split]
        if not 0 <= index < len(items):
            raise UsageError(f"{self.root}: index {index} out of range for split {split!r} of size {len(items)}")
        path, label = items[index]
        d = decode_image(path, self.intensity)
        image = np.repeat(d.image, 3, axis=2) if d.image.shape[2] == 1 else d.image
        return Sample(image=image, label=label, split=split, index=int(index), path=str(path), intensity=d.mapping)

    def paths(self, split: str) -> list[Path]:
        """Files of a split in index order."""
        return [p for p, _ in self._items[split]]

    def info(self) -> SourceInfo:
        """Provenance: the folder, its class names and whether it had split folders."""
        return SourceInfo(
            kind="folder", ref=f"folder:{self.root}", file=str(self.root), class_names=list(self.class_names),
            extra={"split_folders": self.split_folders, "split_sizes": self.split_sizes(),
                   "intensity": self.intensity.spec()},
        )
