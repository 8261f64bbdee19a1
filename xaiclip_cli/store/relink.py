"""A linked (sharded) index renamed together with its parts folder: find the folder, relink the feature VDS.

The index maps its parts with paths relative to its own folder (``s.parts/part-00000.h5``), so moving or copying
the store folder keeps working; renaming ``s.h5`` + ``s.parts`` to ``r.h5`` + ``r.parts`` leaves the old folder
name inside the index, and HDF5 then silently reads the NaN fill. Readers relink in memory (the file is not
touched); ``store merge`` relinks on disk, so plain h5py and seed readers work again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from xaiclip_cli.store import layout as L


def _relative_sources(ds: Any) -> list[Path]:
    return [Path(m.file_name) for m in ds.virtual_sources()
            if m.file_name != "." and not Path(m.file_name).is_absolute()]


def linked_folder(f: Any) -> str | None:
    """The folder name the index's feature VDS points into (relative to the index), or None for a single file."""
    ds = f.get(L.IMAGE_FEATURES)
    if ds is None or not ds.is_virtual:
        return None
    rel = _relative_sources(ds)
    return str(rel[0].parent) if rel else None


def stale_parts_dir(path: Path, f: Any) -> Path | None:
    """The parts folder beside a renamed index (``<stem>.parts``) when the VDS still names a folder that is gone."""
    ds = f.get(L.IMAGE_FEATURES)
    if ds is None or not ds.is_virtual:
        return None
    rel = _relative_sources(ds)
    here = path.resolve().parent
    if not rel or any((here / r).exists() for r in rel):
        return None
    pdir = L.parts_dir(path.resolve())
    if not pdir.is_dir() or not any((pdir / r.name).exists() for r in rel):
        return None
    return pdir


def relink(f: Any, folder: str | Path) -> int:
    """Rewrite the feature VDS of an index open for writing so every source lives in ``folder``; returns sources.

    ``folder`` relative (the parts folder's name) for an index on disk, absolute for an in-memory copy.
    """
    n = 0
    for name in L.FEATURE_DATASETS:
        ds = f.get(name)
        if ds is None or not ds.is_virtual:
            continue
        tail = tuple(ds.shape[1:])
        vl = h5py.VirtualLayout(shape=ds.shape, dtype=ds.dtype)
        for m in ds.virtual_sources():
            lo, hi = m.vspace.get_select_bounds()
            a, b = int(lo[0]), int(hi[0]) + 1
            src = str(Path(folder) / Path(m.file_name).name)
            vl[a:b] = h5py.VirtualSource(src, m.dset_name, shape=(b - a, *tail), dtype=ds.dtype)
            n += 1
        del f[name]
        f.create_virtual_dataset(name, vl, fillvalue=np.nan)
    return n


def open_relinked(path: Path) -> Any:
    """A read-only relinked copy of the index, VDS pointed at the absolute parts folder; the original is untouched.

    The copy is a temporary file deleted at once (the open handle keeps it readable): h5py's in-memory file
    objects crash on VDS reads (h5py 3.16, measured), and the core driver would open the original for writing.
    """
    import os
    import shutil
    import tempfile

    fd, tmp = tempfile.mkstemp(suffix=".h5", prefix="xaiclip-relinked-")
    os.close(fd)
    try:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "r+") as f:
            relink(f, L.parts_dir(path.resolve()))
        return h5py.File(tmp, "r")
    finally:
        os.unlink(tmp)
