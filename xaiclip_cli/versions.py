"""Versions of Python and the libraries that shape xaiclip's numbers, for provenance records."""

from __future__ import annotations

import functools
import importlib.metadata
import platform

LIBS = ("torch", "torchvision", "transformers", "timm", "huggingface_hub", "safetensors", "tokenizers", "numpy",
        "pillow", "h5py", "xaiclip")


def lib_versions() -> dict[str, str | None]:
    """Python and library versions (None for a library that is not installed)."""
    return dict(_lib_versions())


@functools.lru_cache(maxsize=1)
def _lib_versions() -> tuple[tuple[str, str | None], ...]:
    # importlib.metadata scans site-packages (milliseconds per name); versions cannot change inside a process.
    out: list[tuple[str, str | None]] = [("python", platform.python_version())]
    for name in LIBS:
        try:
            out.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            out.append((name, None))
    return tuple(out)
