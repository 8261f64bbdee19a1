"""The one image decoder of every group: PNG/JPEG/TIFF/BMP/WebP (Pillow, tifffile, OpenCV) and DICOM (pydicom).

Files are decoded at their full bit depth and mapped to the uint8 model input by ``--intensity`` (rules in
``data.formats``: by default 8-bit files pass through bit-for-bit, deeper ones get a per-image min-max, DICOM
uses its own VOI window). Each decode returns the mapping it applied (kind, parameters, source dtype, stored
min/max, the window used) so that stores and sidecars record it. DICOM: rescale slope/intercept (modality LUT),
the file's first VOI window (DICOM PS3.3 C.11.2.1.2 LINEAR, LINEAR_EXACT or SIGMOID) or VOI LUT, MONOCHROME1
inverted after mapping; multi-frame files and transfer syntaxes without an installed decoder are refused with one
line naming the file and the syntax. Volumes (NIfTI, NRRD, MetaImage) are refused. The window and min-max
formulas are a few lines of NumPy, hand-written so that 8-bit, 16-bit, float and DICOM files share one mapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from xaiclip_cli.data.formats import (
    IMAGE_EXTENSIONS,
    Intensity,
    is_dicom_name,
    is_volume_name,
    parse_intensity,
    volume_message,
)
from xaiclip_cli.errors import XaiclipError

__all__ = ["IMAGE_EXTENSIONS", "Decoded", "decode_image", "is_image_file", "load_image", "load_mask",
           "read_image", "to_uint8"]

_READ_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, TypeError, KeyError, IndexError)


@dataclass
class Decoded:
    """A decoded image: uint8 HxWxC (C = 1 for grey, 3 for colour) and the mapping that produced it."""

    image: np.ndarray
    mapping: dict[str, Any]


def is_image_file(path: Path) -> bool:
    """True for a regular file with a known image extension (DICOM included, case-insensitive), hidden excluded."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _fail(path: str | Path, what: str, exc: BaseException) -> XaiclipError:
    reason = " ".join(f"{type(exc).__name__}: {exc}".split())
    return XaiclipError(f"{path}: cannot read {what} ({reason}); replace or remove the file")


# --- mapping ------------------------------------------------------------------------------------------------------
def _scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear [lo, hi] → [0, 255], clipped and rounded; a flat range gives zeros."""
    if not hi > lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (arr.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.rint(np.clip(np.nan_to_num(out, nan=0.0), 0, 255)).astype(np.uint8)


def _dicom_window(arr: np.ndarray, c: float, w: float, function: str) -> np.ndarray:
    """DICOM VOI windowing to 0..255 (PS3.3 C.11.2.1.2: LINEAR with its half-unit offsets, LINEAR_EXACT, SIGMOID)."""
    x = np.nan_to_num(arr.astype(np.float64), nan=0.0)
    if function == "SIGMOID":
        y = 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    elif function == "LINEAR_EXACT":
        y = ((x - c) / w + 0.5) * 255.0
    else:  # LINEAR; width 1 is a threshold at c - 0.5
        y = ((x - (c - 0.5)) / max(w - 1.0, 1e-12) + 0.5) * 255.0
    return np.rint(np.clip(y, 0, 255)).astype(np.uint8)


def to_uint8(arr: np.ndarray, intensity: str | Intensity | None = None,
             file_window: tuple[float, float, str] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Map stored values (any dtype, HxW or HxWxC) to uint8 by the ``--intensity`` rules; returns (image, mapping).

    ``file_window`` is a DICOM file's own (centre, width, function), used by ``auto``.
    """
    spec = parse_intensity(intensity)
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    finite = a[np.isfinite(a)] if a.dtype.kind == "f" else a
    vmin = float(finite.min()) if finite.size else 0.0
    vmax = float(finite.max()) if finite.size else 0.0
    facts: dict[str, Any] = {"requested": spec.spec(), "source_dtype": str(np.asarray(arr).dtype),
                             "min": vmin, "max": vmax}
    if spec.kind == "auto" and file_window is not None:
        c, w, function = file_window
        facts.update(kind="dicom-window", params={"center": c, "width": w, "function": function})
        return _dicom_window(a, c, w, function), facts
    if spec.kind == "auto" and a.dtype == np.uint8:
        facts.update(kind="identity", params={})
        return np.ascontiguousarray(a), facts
    if spec.kind == "window":
        c, w = spec.params
        lo, hi = c - w / 2.0, c + w / 2.0
        facts.update(kind="window", params={"center": c, "width": w})
    elif spec.kind == "percentile":
        lo_p, hi_p = spec.params
        lo, hi = ((float(v) for v in np.percentile(finite, [lo_p, hi_p])) if finite.size else (0.0, 0.0))
        facts.update(kind="percentile", params={"low": lo_p, "high": hi_p})
    else:  # auto on a deeper file, or minmax
        lo, hi = vmin, vmax
        facts.update(kind="minmax", params={})
    facts.update(lo=lo, hi=hi)
    return _scale(a, lo, hi), facts


# --- decoders -----------------------------------------------------------------------------------------------------
def _png_bit_depth(path: Path) -> int:
    """The IHDR bit depth of a PNG file (8 when unreadable: Pillow then reports the real error)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)
        return head[24] if len(head) >= 26 and head[:8] == b"\x89PNG\r\n\x1a\n" else 8
    except OSError:
        return 8


def _read_pillow(path: Path) -> np.ndarray:
    """Full-depth values via Pillow: I;16/I/F stay 16/32-bit/float, others become L or RGB uint8 (alpha dropped)."""
    with Image.open(path) as im:
        im.load()
        if getattr(im, "n_frames", 1) > 1 and im.format in ("TIFF",):
            raise XaiclipError(f"{path}: a multi-page TIFF ({im.n_frames} pages) is a stack or volume; xaiclip reads "
                               "2-D images: save one page per file")
        if im.mode.startswith("I;16") or im.mode in ("I", "F"):
            return np.asarray(im)
        if im.mode in ("L", "1"):
            return np.asarray(im.convert("L"))
        if im.mode in ("LA", "La"):
            return np.asarray(im.convert("L"))
        return np.asarray(im.convert("RGB"))


def _read_deep_colour(path: Path) -> np.ndarray | None:
    """16-bit colour PNG/TIFF at full depth (Pillow reduces these to 8 bits): tifffile for TIFF, OpenCV for PNG."""
    suffix = path.suffix.lower()
    if suffix == ".png" and _png_bit_depth(path) == 16:
        import cv2

        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None or arr.ndim != 3:
            return None
        return np.ascontiguousarray(arr[:, :, 2::-1])  # BGR(A) → RGB
    if suffix in (".tif", ".tiff"):
        try:
            import tifffile
        except ImportError:
            return None
        try:
            with tifffile.TiffFile(path) as tf:
                if len(tf.pages) > 1:
                    return None  # Pillow's reader gives the multi-page refusal
                arr = tf.pages[0].asarray()
        except Exception:  # noqa: BLE001 - tifffile lacks a codec: Pillow decides
            return None
        if arr.ndim == 3 and arr.shape[2] in (3, 4) and arr.dtype != np.uint8:
            return np.ascontiguousarray(arr[:, :, :3])
    return None


def _dicom_window_of(ds: Any) -> tuple[float, float, str] | None:
    """The file's first VOI window (centre, width, function), or None."""
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
    if c is None or w is None:
        return None
    c = c[0] if hasattr(c, "__len__") and not isinstance(c, str) else c
    w = w[0] if hasattr(w, "__len__") and not isinstance(w, str) else w
    try:
        c, w = float(c), float(w)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(c) and math.isfinite(w)) or w <= 0:
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    return c, w, function if function in ("LINEAR", "LINEAR_EXACT", "SIGMOID") else "LINEAR"


def _read_dicom(path: Path, intensity: Intensity) -> Decoded:
    """A single-frame DICOM image: modality LUT, VOI window or --intensity, MONOCHROME1 inverted."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, *_READ_ERRORS) as exc:
        raise _fail(path, "DICOM file", exc) from None
    if "PixelData" not in ds:
        raise XaiclipError(f"{path}: DICOM file holds no image (no PixelData; a report or structured document?)")
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    syntax = f"{uid.name} ({uid})" if uid is not None else "unknown transfer syntax"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise XaiclipError(f"{path}: multi-frame DICOM ({frames} frames, {syntax}) is a volume or cine loop; "
                           "xaiclip reads 2-D images: export single frames")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises RuntimeError/NotImplementedError/ValueError by plugin
        reason = " ".join(str(exc).split())[:160]
        if uid is not None and not uid.is_compressed:  # nothing to decompress: the pixel data itself is damaged
            raise XaiclipError(f"{path}: DICOM pixel data cannot be read ({syntax}: {reason}); replace the file") \
                from None
        raise XaiclipError(f"{path}: DICOM transfer syntax {syntax} cannot be decoded here ({reason}); install "
                           "a decoder plugin (pylibjpeg, python-gdcm) or convert the file") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    dicom: dict[str, Any] = {"format": "dicom", "transfer_syntax": str(uid) if uid is not None else None,
                             "photometric": photometric, "stored_dtype": str(arr.dtype)}
    window = None
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)  # 8- or 16-bit RGB
        dicom["palette"] = True
    elif photometric.startswith("MONOCHROME"):
        slope, icpt = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        if slope is not None or icpt is not None or "ModalityLUTSequence" in ds:
            arr = apply_modality_lut(arr, ds)
            dicom["rescale"] = {"slope": float(slope if slope is not None else 1),
                                "intercept": float(icpt if icpt is not None else 0)}
        window = _dicom_window_of(ds)
        if window is None and "VOILUTSequence" in ds and intensity.kind == "auto":
            arr = apply_voi_lut(arr, ds, prefer_lut=True)
            dicom["voi_lut"] = True
    image, mapping = to_uint8(arr, intensity, window)
    if photometric == "MONOCHROME1":  # 0 is white: invert so that bright means high, as every other input
        image = 255 - image
        dicom["inverted"] = True
    if image.ndim == 2:
        image = image[:, :, None]
    return Decoded(np.ascontiguousarray(image), {**mapping, **dicom})


def decode_image(path: str | Path, intensity: str | Intensity | None = None) -> Decoded:
    """Decode one image file at full depth and map it to uint8 HxWxC (grey kept as HxWx1); errors name the file."""
    p = Path(path)
    spec = parse_intensity(intensity)
    if is_volume_name(p):
        raise XaiclipError(volume_message(p))
    if not p.is_file():
        raise XaiclipError(f"{p}: image file not found")
    if is_dicom_name(p) or _looks_like_dicom(p):  # archives often drop the .dcm suffix: the DICM magic tells
        return _read_dicom(p, spec)
    try:
        arr = _read_deep_colour(p)
        if arr is None:
            arr = _read_pillow(p)
    except XaiclipError:
        raise
    except _READ_ERRORS as exc:
        raise _fail(p, "image", exc) from None
    image, mapping = to_uint8(arr, spec)
    if image.ndim == 2:
        image = image[:, :, None]
    return Decoded(np.ascontiguousarray(image), mapping)


def _looks_like_dicom(path: Path) -> bool:
    """True when the file carries the DICOM preamble magic ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_image(path: str | Path, intensity: str | Intensity | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """An image file as uint8 HxWxC (grey kept as HxWx1) and the mapping applied (for sidecars)."""
    d = decode_image(path, intensity)
    return d.image, d.mapping


def load_image(path: str | Path, intensity: str | Intensity | None = None) -> np.ndarray:
    """An image file as uint8 RGB HxWx3 (grey replicated, alpha dropped), mapped by ``intensity``."""
    image = decode_image(path, intensity).image
    return np.ascontiguousarray(np.repeat(image, 3, axis=2)) if image.shape[2] == 1 else image


def load_mask(path: str | Path) -> np.ndarray:
    """A mask image as uint8 HxW with 1 where the pixel is non-zero (any bit depth)."""
    p = Path(path)
    try:
        arr = _read_pillow(p)
    except XaiclipError:
        raise
    except _READ_ERRORS as exc:
        raise _fail(p, "mask", exc) from None
    arr = np.asarray(arr)
    return (arr.reshape(arr.shape[0], arr.shape[1], -1).max(axis=2) > 0).astype(np.uint8)
