"""Image file kinds (2-D images, DICOM, volumes) and the ``--intensity`` mapping spec (pure Python, nothing heavy).

The mapping from stored values to the model's uint8 input (applied by ``data.imageio``):

* ``auto`` (default): 8-bit files (uint8 PNG/JPEG/TIFF/BMP, 8-bit DICOM without rescale or window) are passed
  through bit-for-bit; deeper files (16-bit PNG, 16-bit/32-bit/float TIFF, DICOM after rescale) get a per-image
  min-max of the stored values to 0..255; a DICOM file's own VOI window (WindowCenter/WindowWidth) is used when
  present.
* ``minmax``: per-image min-max for every file, 8-bit ones included, ignoring a DICOM file's window.
* ``window:C,W``: the linear window [C - W/2, C + W/2] → 0..255, clipped (C, W in stored units: HU after a CT's
  rescale), for every file.
* ``percentile:a,b``: the a-th..b-th percentile of the image's values → 0..255, clipped, for every file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom")
DICOM_EXTENSIONS = (".dcm", ".dicom")
VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
INTENSITY_KINDS = ("auto", "minmax", "window", "percentile")
INTENSITY_HELP = (
    "Stored values → model input: auto (8-bit files unchanged, deeper files per-image min-max, a DICOM file's own "
    "window when present), minmax (every file), window:C,W (centre, width in stored units) or percentile:a,b."
)


def is_volume_name(path: str | Path) -> bool:
    """True for a volume file name (NIfTI ``.nii``/``.nii.gz``, NRRD, MetaImage): out of scope for 2-D decoding."""
    name = Path(path).name.lower()
    return name.endswith(VOLUME_EXTENSIONS)


def is_dicom_name(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom`` file name."""
    return Path(path).suffix.lower() in DICOM_EXTENSIONS


def volume_message(path: str | Path) -> str:
    """The one-line refusal for a volume file."""
    return (f"{path}: a 3-D volume (NIfTI/NRRD/MetaImage) is not supported; xaiclip reads 2-D images: export "
            "slices as PNG, TIFF or DICOM")


@dataclass(frozen=True)
class Intensity:
    """A parsed ``--intensity`` value: kind and its numeric parameters."""

    kind: str = "auto"
    params: tuple[float, ...] = ()

    def spec(self) -> dict[str, Any]:
        """The request as a JSON-able dict (recorded in provenance and sidecars)."""
        names = {"window": ("center", "width"), "percentile": ("low", "high")}.get(self.kind, ())
        return {"kind": self.kind, "params": dict(zip(names, self.params, strict=True))}

    def __str__(self) -> str:
        return self.kind if not self.params else f"{self.kind}:{','.join(f'{p:g}' for p in self.params)}"


def parse_intensity(value: str | Intensity | None) -> Intensity:
    """Parse ``auto``, ``minmax``, ``window:C,W`` or ``percentile:a,b``; ValueError names the accepted forms."""
    if value is None:
        return Intensity()
    if isinstance(value, Intensity):
        return value
    text = str(value).strip().lower()
    kind, sep, rest = text.partition(":")
    forms = "use auto, minmax, window:C,W or percentile:a,b"
    if kind not in INTENSITY_KINDS:
        raise ValueError(f"unknown intensity mapping {value!r} ({forms})")
    if kind in ("auto", "minmax"):
        if sep:
            raise ValueError(f"{kind} takes no parameters, got {value!r} ({forms})")
        return Intensity(kind)
    parts = [p.strip() for p in rest.split(",")] if sep else []
    try:
        nums = tuple(float(p) for p in parts)
    except ValueError:
        nums = ()
    if len(nums) != 2 or any(n != n or n in (float("inf"), float("-inf")) for n in nums):
        raise ValueError(f"{kind} needs two numbers, e.g. {kind}:{'40,400' if kind == 'window' else '1,99'}; "
                         f"got {value!r}")
    if kind == "window" and nums[1] <= 0:
        raise ValueError(f"window width must be > 0, got {value!r}")
    if kind == "percentile" and not 0 <= nums[0] < nums[1] <= 100:
        raise ValueError(f"percentiles need 0 <= a < b <= 100, got {value!r}")
    return Intensity(kind, nums)
