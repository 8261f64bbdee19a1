"""Open a data source from a reference string: ``toycells``, ``medmnist:<flag>``, ``folder:<dir>``, ``csv:<file>``.

Accepted forms (also listed in every error):
  toycells | toycells:<file.npz>           the shipped synthetic toy cells (64 px) or another toy-cells npz
  medmnist:<flag> | medmnist:<flag>_<size> a MedMNIST 2D flag under data_root (size also from ``size=``)
  medmnist:<file.npz>                      an official MedMNIST file given by path (flag/size from its name)
  npz:<file.npz>                           any MedMNIST-format npz (no metadata)
  folder:<dir>                             an image folder, root/<class>/<image> (see data.folder)
  csv:<file.csv>                           a manifest path,label,split[,text][,mask]
"""

from __future__ import annotations

import re
from pathlib import Path

from xaiclip_cli.data.base import DataSource
from xaiclip_cli.errors import UsageError

ACCEPTED = (
    "toycells, toycells:<file.npz>, medmnist:<flag>, medmnist:<flag>_<size>, medmnist:<file.npz>, "
    "npz:<file.npz>, folder:<dir>, csv:<file.csv>"
)


def _bad(ref: str, why: str) -> UsageError:
    return UsageError(f"data reference {ref!r}: {why}; accepted forms: {ACCEPTED}")


def _medmnist(ref: str, arg: str, size: int | None, data_root: str | Path | None, download: bool) -> DataSource:
    from xaiclip_cli.data.medmnist import MedMNISTSource

    path = None
    name = arg
    if arg.endswith(".npz"):
        path = Path(arg).expanduser()
        name = path.stem
    m = re.fullmatch(r"([a-z0-9]+?)(?:_(\d+))?", name.lower())
    if not m:
        raise _bad(ref, f"cannot read a MedMNIST flag from {name!r}")
    flag, size_in_name = m.group(1), m.group(2)
    if size_in_name is not None:
        if size is not None and int(size_in_name) != int(size):
            raise _bad(ref, f"size {size_in_name} in the reference differs from size {size}")
        size = int(size_in_name)
    if path is not None and not path.is_file():
        raise UsageError(f"{path}: MedMNIST file not found")
    return MedMNISTSource(flag, size=size, data_root=data_root, download=download, path=path)


def open_source(
    ref: str, size: int | None = None, data_root: str | Path | None = None, download: bool = False,
    intensity: str | None = None,
) -> DataSource:
    """A DataSource for a reference string (forms in the module docstring); bad references raise a UsageError.

    ``intensity`` (``--intensity``, see data.formats) maps image files of folder and csv sources to uint8;
    npz-backed sources (toycells, medmnist, npz) already hold uint8 and refuse anything but ``auto``.
    """
    ref = str(ref).strip()
    kind, sep, arg = ref.partition(":")
    kind = kind.lower()
    if len(kind) == 1 and sep and arg.startswith(("\\", "/")):  # a Windows drive letter, not a kind
        kind, arg = "", ref
    if intensity not in (None, "auto") and kind in ("toycells", "medmnist", "npz"):
        raise UsageError(f"--intensity {intensity} applies to image files (folder:, csv:); {ref} holds uint8 "
                         "arrays already")
    if kind == "toycells":
        from xaiclip_cli.data.toycells import ToyCellsSource

        src = ToyCellsSource(Path(arg).expanduser() if arg else None)
        if size is not None and src.image_size != int(size):
            raise _bad(ref, f"toy cells are {src.image_size} px, size {size} was asked for (regenerate with "
                       f"python -m xaiclip_cli.data.toycells --size {size} --out FILE and use toycells:FILE)")
        return src
    if not sep or not arg:
        raise _bad(ref, "missing kind or argument")
    if kind == "medmnist":
        return _medmnist(ref, arg, size, data_root, download)
    if kind == "npz":
        from xaiclip_cli.data.npz import NpzSource

        src = NpzSource(Path(arg).expanduser(), kind="npz", ref=ref)
        if size is not None and src.image_size != int(size):
            raise _bad(ref, f"images are {src.image_size} px, size {size} was asked for")
        return src
    if kind == "folder":
        from xaiclip_cli.data.folder import FolderSource

        return FolderSource(arg, intensity=intensity)
    if kind == "csv":
        from xaiclip_cli.data.csv_manifest import CsvSource

        return CsvSource(arg, intensity=intensity)
    raise _bad(ref, f"unknown kind {kind!r}")
