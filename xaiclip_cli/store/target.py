"""What an ``--h5`` path holds before a writer touches it, and what a writer may do with it.

A store is the user's data, and so is anything else a mistyped ``--h5`` may name. A writer only writes into, renames
or deletes what provably belongs to a store: a file carrying the store's schema attribute (or the seed layout), or
a damaged index whose parts folder holds parts carrying it. Everything else (a directory, a text file, an empty
file, another program's HDF5 file) is refused with exit 2 and left byte-identical, with or without --overwrite.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import h5py

from xaiclip_cli.errors import UsageError
from xaiclip_cli.store import layout as L

log = logging.getLogger("xaiclip.store")

# Kinds of what an --h5 path holds.
ABSENT = "absent"
DIRECTORY = "directory"
SPECIAL = "special"  # a fifo, a device, ...
EMPTY = "empty"  # zero bytes
NOT_HDF5 = "not-hdf5"  # bytes without an HDF5 signature (a text file, an image, ...)
UNREADABLE = "unreadable-hdf5"  # an HDF5 signature, but it will not open (truncated, killed writer)
STORE = "store"  # an xaiclip store (schema attr)
SEED = "seed"  # a store in the seed project's layout (no schema attr, seed datasets)
FOREIGN = "foreign-hdf5"  # another program's HDF5 file (or an empty one)


@dataclass(frozen=True)
class Target:
    """What an --h5 path holds and whether a parts folder beside it proves it is a store's index."""

    path: Path
    kind: str
    our_parts: bool

    @property
    def damaged_index(self) -> bool:
        """An index that will not open (or is empty) beside parts of ours: it may be set aside and rebuilt."""
        return self.our_parts and self.kind in (EMPTY, UNREADABLE)


def _is_our_part(p: Path) -> bool:
    try:
        with h5py.File(p, "r") as f:
            return L.SCHEMA_ATTR in f.attrs and "row_start" in f.attrs
    except (OSError, KeyError, RuntimeError):
        return False


def has_our_parts(h5: Path) -> bool:
    """True when the parts folder of ``h5`` holds at least one part written by xaiclip (schema attr + row range)."""
    pdir = L.parts_dir(h5)
    if not pdir.is_dir():
        return False
    names = sorted(pdir.glob("part-*.h5")) + sorted(pdir.glob("part-*.h5" + L.PART_PARTIAL_SUFFIX))
    return any(_is_our_part(p) for p in names)


def inspect_target(h5: str | Path) -> Target:
    """Classify what ``h5`` holds (see the kind constants); opens an HDF5 file read-only, never writes."""
    p = Path(h5)
    if not p.exists() and not p.is_symlink():
        return Target(p, ABSENT, has_our_parts(p))
    if p.is_dir():
        return Target(p, DIRECTORY, False)
    if not p.is_file():
        return Target(p, SPECIAL, False)
    parts = has_our_parts(p)
    if p.stat().st_size == 0:
        return Target(p, EMPTY, parts)
    if not h5py.is_hdf5(p):
        return Target(p, NOT_HDF5, parts)
    from xaiclip_cli.store.writer import try_open

    f = try_open(p)
    if f is None:
        return Target(p, UNREADABLE, parts)
    with f:
        if L.SCHEMA_ATTR in f.attrs:
            kind = STORE
        elif L.IMAGE_FEATURES in f or L.TEMPLATES in f:
            kind = SEED
        else:
            kind = FOREIGN
    return Target(p, kind, parts)


def _describe(t: Target) -> str:
    return {
        DIRECTORY: "is a directory",
        SPECIAL: "is not a regular file",
        EMPTY: "is an empty file",
        NOT_HDF5: "is not an HDF5 file",
        UNREADABLE: "is an HDF5 file that will not open",
        FOREIGN: f"is an HDF5 file that is not an xaiclip store (no {L.SCHEMA_ATTR} attribute)",
    }.get(t.kind, t.kind)


def set_aside(path: Path) -> Path:
    """Rename ``path`` to a free ``<name>.damaged[.N]`` (never over an earlier one); returns the new name."""
    dest = path.with_name(path.name + ".damaged")
    n = 1
    while dest.exists():
        dest = path.with_name(f"{path.name}.damaged.{n}")
        n += 1
    path.replace(dest)
    return dest


def claim_target(h5: str | Path, *, overwrite: bool = False, rebuild: bool = True) -> Target:
    """Make sure a writer may use ``h5``; refuse (exit 2) what is not provably a store, set aside a damaged index.

    ``rebuild``: a damaged index beside our parts may be renamed to ``.damaged`` so a new one is built from the
    parts (the sharded layout); otherwise, and for an unreadable file without parts, only --overwrite sets it
    aside. Returns what the path held (after any renaming the path is absent).
    """
    t = inspect_target(h5)
    p = t.path
    if t.kind in (ABSENT, STORE, SEED):
        return t
    if t.kind in (DIRECTORY, SPECIAL):
        raise UsageError(f"--h5 {p} {_describe(t)}; name the store's .h5 file (e.g. {p / 'xaiclip_features.h5'})"
                         if t.kind == DIRECTORY else f"--h5 {p} {_describe(t)}; name the store's .h5 file")
    if t.damaged_index and (rebuild or overwrite):
        dest = set_aside(p)
        log.warning("index %s %s; its parts folder %s holds this store's parts: moved it to %s and rebuilding the "
                    "index from the parts", p, _describe(t), L.parts_dir(p), dest.name)
        return t
    if t.damaged_index:
        raise UsageError(f"index {p} {_describe(t)}; its parts folder {L.parts_dir(p).name} holds the store: run "
                         f"'xaiclip store merge --h5 {p}' to rebuild the index from them, then rerun")
    if t.kind == UNREADABLE and overwrite:
        dest = set_aside(p)
        log.warning("--overwrite: %s %s; moved it to %s (nothing deleted) and starting a new store", p,
                    _describe(t), dest.name)
        return t
    hint = "; pass --overwrite to set it aside as .damaged and start over" if t.kind == UNREADABLE else ""
    raise UsageError(f"--h5 {p} {_describe(t)}; refusing to write into, rename or replace it (it is not "
                     f"provably a store){hint}; pass another --h5")


def check_rank_target(h5: str | Path) -> Target:
    """A rank of a multi-process run never writes the index, but refuses to put parts beside what is not a store."""
    t = inspect_target(h5)
    if t.kind in (DIRECTORY, SPECIAL, NOT_HDF5, FOREIGN) or (t.kind in (EMPTY, UNREADABLE) and not t.our_parts):
        raise UsageError(f"--h5 {t.path} {_describe(t)}; refusing to write a store beside it; pass another --h5")
    return t
