"""Fixtures for data tests: synthetic MedMNIST npz files, image folders and CSV manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIZES = {"train": 16, "val": 4, "test": 8}


def make_npz(path: Path, size: int = 28, channels: int = 3, n_labels: int = 1, n_classes: int = 8,
             sizes: dict[str, int] | None = None, seed: int = 0, **overrides: np.ndarray) -> dict[str, np.ndarray]:
    """Write a MedMNIST-format npz (six keys); ``overrides`` replace or add arrays. Returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, n in (sizes or SIZES).items():
        shape = (n, size, size) if channels == 1 else (n, size, size, channels)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        if n_labels == 1:
            arrays[f"{split}_labels"] = rng.integers(0, n_classes, (n, 1)).astype(np.uint8)
        else:
            arrays[f"{split}_labels"] = rng.integers(0, 2, (n, n_labels)).astype(np.uint8)
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez_compressed(path, **arrays)
    return arrays


@pytest.fixture
def blood_root(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A data root holding a synthetic bloodmnist.npz (16/4/8 RGB images at 28 px)."""
    arrays = make_npz(tmp_path / "bloodmnist.npz")
    return tmp_path, arrays


def write_png(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (12, 10), mode: str = "RGB") -> None:
    """A small solid-colour image file (width, height = size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, rgb)
    (img.convert(mode) if mode != "RGB" else img).save(path)
