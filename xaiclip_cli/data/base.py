"""The data-source interface: every source yields (uint8 HWC image, label, split, source index, optional mask)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xaiclip_cli.errors import UsageError

SPLITS = ("train", "val", "test")
# Ground-truth mask kinds: "cell" is the source's own mask (Sample.mask: the target cell of toy cells, a CSV mask
# column ...); "nuclei" is the finer nucleus + granule mask only toy cells ship.
MASK_KINDS = ("cell", "nuclei")


@dataclass
class Sample:
    """One image of a source split, as uint8 HWC (grey images are HxWx1)."""

    image: np.ndarray
    label: int
    split: str
    index: int
    mask: np.ndarray | None = None
    path: str | None = None
    text: str | None = None
    targets: np.ndarray | None = None  # multi-label rows (label is then -1)
    intensity: dict[str, Any] | None = None  # how a file's stored values became uint8 (data.imageio), None for npz


@dataclass
class SourceInfo:
    """Provenance of a source: what it is, which file, its MD5, image size, class names."""

    kind: str
    ref: str
    file: str | None = None
    md5: str | None = None
    image_size: int | None = None
    class_names: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class DataSource(abc.ABC):
    """A dataset split into train/val/test with random access by (split, index within split)."""

    @abc.abstractmethod
    def split_sizes(self) -> dict[str, int]:
        """Number of samples per split, keys in ``SPLITS`` order (missing splits have 0)."""

    @abc.abstractmethod
    def get(self, split: str, index: int) -> Sample:
        """The sample at position ``index`` of ``split`` (source order)."""

    @abc.abstractmethod
    def info(self) -> SourceInfo:
        """Provenance and class names."""

    def mask_kinds(self) -> tuple[str, ...]:
        """Mask kinds (of ``MASK_KINDS``) this source may hold; "cell" = ``Sample.mask`` (may still be None)."""
        return ("cell",)

    def get_mask(self, split: str, index: int, kind: str = "cell") -> np.ndarray | None:
        """The ``kind`` mask of one sample (uint8 H×W) or None; a kind the source lacks raises a UsageError."""
        if kind == "cell":
            return self.get(split, index).mask
        raise UsageError(f"{self.info().ref}: no {kind} masks (has: {', '.join(self.mask_kinds()) or 'none'})")

    def get_many(self, split: str, indices: list[int]) -> list[Sample]:
        """Several samples of one split; sources override this for vectorised reads."""
        return [self.get(split, i) for i in indices]

    def __len__(self) -> int:
        return sum(self.split_sizes().values())
