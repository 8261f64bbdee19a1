"""Export selections read from a store to .npy (one array) or .npz (named arrays), atomically, never overwriting."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from xaiclip_cli.errors import UsageError, XaiclipError


def save_arrays(path: str | Path, arrays: Mapping[str, np.ndarray], overwrite: bool = False,
                primary: str | None = None) -> Path:
    """Write ``arrays`` to ``path``: .npz keeps every name; .npy takes ``primary`` (or the only array).

    The file is written under a temporary name in the same folder and renamed, so a reader never sees half a file.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise UsageError(f"--out must end in .npy or .npz, got {p.name!r}")
    if p.exists() and not overwrite:
        raise UsageError(f"--out {p} exists; pass --overwrite to replace it")
    if p.is_dir():
        raise UsageError(f"--out {p} is a directory")
    if not p.parent.exists():
        raise UsageError(f"--out folder {p.parent} does not exist")
    if suffix == ".npy":
        if primary is None:
            if len(arrays) != 1:
                names = ", ".join(arrays)
                raise UsageError(f"the selection has {len(arrays)} arrays ({names}); write it to a .npz file")
            primary = next(iter(arrays))
        to_write: np.ndarray | dict[str, np.ndarray] = np.asarray(arrays[primary])
    else:
        to_write = {k: np.asarray(v) for k, v in arrays.items()}
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        # Writing through an open handle stops NumPy from appending its own suffix to the temporary name.
        with open(tmp, "wb") as fh:
            if isinstance(to_write, dict):
                np.savez(fh, **to_write)
            else:
                np.save(fh, to_write, allow_pickle=False)
        os.replace(tmp, p)
    except OSError as exc:
        raise XaiclipError(f"cannot write --out {p}: {exc.strerror or exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return p
