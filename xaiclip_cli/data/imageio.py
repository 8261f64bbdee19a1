"""Read image and mask files with PIL into the uint8 arrays every source yields; one-line errors name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from xaiclip_cli.errors import XaiclipError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


def is_image_file(path: Path) -> bool:
    """True for a regular file with a known image extension (case-insensitive), hidden files excluded."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _decode(path: str | Path, mode: str, what: str) -> np.ndarray:
    """Decode a file fully (truncated files fail here, not later) and convert it to a PIL mode."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise XaiclipError(f"{path}: cannot read {what} ({reason}); replace or remove the file") from None


def load_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB HxWx3 (grey and palette images are converted, alpha is dropped)."""
    return _decode(path, "RGB", "image")


def load_mask(path: str | Path) -> np.ndarray:
    """A mask image as uint8 HxW with 1 where the pixel is non-zero (after conversion to grey)."""
    return (_decode(path, "L", "mask") > 0).astype(np.uint8)
