"""MedMNIST-format npz reader: ``{split}_images``/``{split}_labels`` (+ optional ``{split}_masks``/``_nuclei``), lazy.

Hand-written on NumPy rather than medmnist's Dataset class, which asserts the official split sizes (small files
fail ``len()``) and loads whole splits eagerly. Structure problems (keys, dtypes, shapes) are UsageErrors (exit 2:
the user pointed at the wrong file); an unreadable, corrupt file is an XaiclipError (exit 1). Headers are checked
at open without decompressing; each array is decompressed on first use, once per process (a forked worker
reopens instead of sharing the parent's zip handle).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from xaiclip_cli.data.base import MASK_KINDS, SPLITS, DataSource, Sample, SourceInfo
from xaiclip_cli.errors import UsageError, XaiclipError


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    """MD5 hex digest of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_npz_headers(path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an npz, read from the .npy headers without decompressing the data."""
    path = Path(path)
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if not name.endswith(".npy"):
                    continue
                with zf.open(name) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                out[name[:-4]] = (tuple(shape), np.dtype(dtype))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise XaiclipError(f"{path}: not a readable .npz file ({exc}); re-download or regenerate it") from None
    return out


# Mask kind (data.base.MASK_KINDS) -> npz key suffix ({split}_masks, {split}_nuclei); both optional, validated.
MASK_KEYS: dict[str, str] = dict(zip(MASK_KINDS, ("masks", "nuclei"), strict=True))


class NpzSource(DataSource):
    """A MedMNIST-format npz as a ``DataSource`` (RGB ``(N,S,S,3)`` or grey ``(N,S,S)`` uint8; labels ``(N,1|L)``)."""

    def __init__(
        self,
        path: str | Path,
        *,
        kind: str = "npz",
        ref: str | None = None,
        class_names: list[str] | None = None,
        md5: str | None = None,
        require_masks: bool = False,
        required_splits: tuple[str, ...] = SPLITS,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.kind = kind
        self.ref = ref or f"{kind}:{self.path}"
        self.class_names = list(class_names or [])
        self.md5 = md5
        self.extra = dict(extra or {})
        if not self.path.is_file():
            raise UsageError(f"{self.path}: file not found")
        self._shapes = self._validate(read_npz_headers(self.path), require_masks, required_splits)
        self._pid: int | None = None
        self._cache: dict[str, np.ndarray] = {}

    # -- validation -------------------------------------------------------------------------------------------
    def _validate(
        self, headers: dict[str, tuple[tuple[int, ...], np.dtype]], require_masks: bool, required: tuple[str, ...]
    ) -> dict[str, tuple[int, ...]]:
        """Check keys, dtypes and shapes from the headers; return {key: shape} of the arrays this source uses."""
        p = self.path
        present = [s for s in SPLITS if f"{s}_images" in headers or f"{s}_labels" in headers]
        want = [f"{s}_{k}" for s in dict.fromkeys([*required, *present]) for k in ("images", "labels")]
        if require_masks:
            want += [f"{s}_masks" for s in dict.fromkeys([*required, *present])]
        missing = [k for k in want if k not in headers]
        if missing:
            raise UsageError(
                f"{p}: missing keys {', '.join(missing)} (has {', '.join(sorted(headers)) or 'none'}); "
                "expected MedMNIST keys train_images, train_labels, val_images, val_labels, test_images, test_labels"
            )
        if not present:
            raise UsageError(f"{p}: no split arrays (need train_/val_/test_ images and labels)")
        shapes: dict[str, tuple[int, ...]] = {}
        side: tuple[int, int] | None = None
        channels: int | None = None
        for s in present:
            (ishape, idt), (lshape, ldt) = headers[f"{s}_images"], headers[f"{s}_labels"]
            if idt != np.uint8:
                raise UsageError(f"{p}: {s}_images has dtype {idt}, expected uint8")
            if len(ishape) == 5 or (len(ishape) == 4 and ishape[1] == ishape[2] == ishape[3] > 4):  # (N,D,H,W) cubes
                raise UsageError(f"{p}: {s}_images has shape {ishape}: 3-D volumes (MedMNIST 3D) are not supported; "
                                 "xaiclip reads 2-D images (N,S,S) or (N,S,S,3)")
            if len(ishape) not in (3, 4) or ishape[1] != ishape[2] or (len(ishape) == 4 and ishape[3] not in (1, 3)):
                raise UsageError(f"{p}: {s}_images has shape {ishape}, expected (N,S,S) or (N,S,S,3)")
            c = 1 if len(ishape) == 3 else ishape[3]
            if side is not None and (ishape[1:3] != side or c != channels):
                raise UsageError(f"{p}: {s}_images has shape {ishape}, other splits have {side} x {channels} channels")
            side, channels = ishape[1:3], c
            if not np.issubdtype(ldt, np.integer) and ldt != np.bool_:
                raise UsageError(f"{p}: {s}_labels has dtype {ldt}, expected integers")
            if len(lshape) == 1:
                lshape = (lshape[0], 1)  # tolerate flat labels; read back as (N, 1)
            if len(lshape) != 2 or lshape[0] != ishape[0]:
                raise UsageError(f"{p}: {s}_labels has shape {lshape}, expected ({ishape[0]}, 1) or ({ishape[0]}, L)")
            shapes[f"{s}_images"], shapes[f"{s}_labels"] = ishape, lshape
            for suffix in MASK_KEYS.values():
                if f"{s}_{suffix}" in headers:
                    mshape, mdt = headers[f"{s}_{suffix}"]
                    if mshape != ishape[:3] or not (mdt == np.uint8 or mdt == np.bool_):
                        raise UsageError(f"{p}: {s}_{suffix} has shape {mshape} {mdt}, expected {ishape[:3]} uint8")
                    shapes[f"{s}_{suffix}"] = mshape
        self.image_size = int(side[0]) if side else None
        self.channels = int(channels or 0)
        self.n_labels = int(shapes[f"{present[0]}_labels"][1])
        return shapes

    # -- lazy arrays ------------------------------------------------------------------------------------------
    def _array(self, key: str) -> np.ndarray:
        """Decompress one array on first use in this process."""
        if self._pid != os.getpid():
            self._cache, self._pid = {}, os.getpid()
        arr = self._cache.get(key)
        if arr is None:
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    arr = z[key]
            except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
                raise XaiclipError(f"{self.path}: cannot read {key} ({exc}); re-download or regenerate it") from None
            if key.endswith("_labels"):
                arr = arr.reshape(arr.shape[0], -1).astype(np.int64, copy=False)
            elif key.endswith(tuple(f"_{k}" for k in MASK_KEYS.values())):
                arr = arr.astype(np.uint8, copy=False)
            self._cache[key] = arr
        return arr

    def _check_split(self, split: str) -> None:
        if f"{split}_images" not in self._shapes:
            have = ", ".join(s for s in SPLITS if f"{s}_images" in self._shapes)
            raise UsageError(f"{self.path}: no split {split!r} (has {have})")

    def images(self, split: str) -> np.ndarray:
        """All images of a split as stored: (N,S,S,3) or (N,S,S) uint8."""
        self._check_split(split)
        return self._array(f"{split}_images")

    def labels(self, split: str) -> np.ndarray:
        """All labels of a split as int64 (N, 1) or (N, L)."""
        self._check_split(split)
        return self._array(f"{split}_labels")

    def masks(self, split: str, kind: str = "cell") -> np.ndarray | None:
        """All ``kind`` masks of a split (N,S,S) uint8 (``MASK_KEYS``), or None when the file has none."""
        self._check_split(split)
        key = f"{split}_{MASK_KEYS[kind]}"
        return self._array(key) if key in self._shapes else None

    def mask_kinds(self) -> tuple[str, ...]:
        """Mask kinds every split of the file holds (toy cells: cell and nuclei; MedMNIST: none)."""
        present = [s for s in SPLITS if f"{s}_images" in self._shapes]
        return tuple(k for k, suffix in MASK_KEYS.items()
                     if present and all(f"{s}_{suffix}" in self._shapes for s in present))

    def get_mask(self, split: str, index: int, kind: str = "cell") -> np.ndarray | None:
        """One sample's ``kind`` mask (a copy), None when the file has no such mask for the split."""
        if kind not in MASK_KEYS:
            raise UsageError(f"unknown mask kind {kind!r} ({', '.join(MASK_KEYS)})")
        if kind != "cell" and kind not in self.mask_kinds():
            raise UsageError(f"{self.ref}: no {kind} masks (has: {', '.join(self.mask_kinds()) or 'none'})")
        (i,) = self._check_indices(split, [index])
        m = self.masks(split, kind)
        return None if m is None else m[i].copy()

    # -- DataSource -------------------------------------------------------------------------------------------
    def split_sizes(self) -> dict[str, int]:
        """Samples per split (0 for splits the file lacks)."""
        return {s: int(self._shapes[f"{s}_images"][0]) if f"{s}_images" in self._shapes else 0 for s in SPLITS}

    def _sample(self, split: str, i: int, img: np.ndarray, lab: np.ndarray, mask: np.ndarray | None) -> Sample:
        if img.ndim == 2:
            img = img[:, :, None]
        multi = lab.shape[0] > 1
        return Sample(
            image=img,
            label=-1 if multi else int(lab[0]),
            split=split,
            index=int(i),
            mask=mask,
            path=f"{self.path}#{split}/{i}",
            targets=lab.copy() if multi else None,
        )

    def _check_indices(self, split: str, indices: list[int]) -> np.ndarray:
        self._check_split(split)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = self.split_sizes()[split]
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            bad = int(idx[(idx < 0) | (idx >= n)][0])
            raise UsageError(f"{self.path}: index {bad} out of range for split {split!r} of size {n}")
        return idx

    def get(self, split: str, index: int) -> Sample:
        """One sample (grey images come back as HxWx1)."""
        (i,) = self._check_indices(split, [index])
        m = self.masks(split)
        # Copies: a caller drawing on its sample must not change the cached split.
        mask = None if m is None else m[i].copy()
        return self._sample(split, i, self.images(split)[i].copy(), self.labels(split)[i], mask)

    def get_many(self, split: str, indices: list[int]) -> list[Sample]:
        """Several samples of one split with one fancy-index read per array."""
        idx = self._check_indices(split, indices)
        imgs, labs, m = self.images(split)[idx], self.labels(split)[idx], self.masks(split)
        masks = m[idx] if m is not None else [None] * len(idx)
        return [self._sample(split, i, im, lb, mk) for i, im, lb, mk in zip(idx, imgs, labs, masks, strict=True)]

    def info(self) -> SourceInfo:
        """Provenance: kind, ref, file, MD5 (when known), image size and class names."""
        extra = {"channels": self.channels, "n_labels": self.n_labels, "split_sizes": self.split_sizes(), **self.extra}
        return SourceInfo(
            kind=self.kind, ref=self.ref, file=str(self.path), md5=self.md5, image_size=self.image_size,
            class_names=list(self.class_names), extra=extra,
        )
