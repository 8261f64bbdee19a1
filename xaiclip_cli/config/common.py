"""Common runtime settings (device, gpus, seed, threads, output dir, log level) inherited by compute groups."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from xaiclip_cli.config.base import XaiclipSettings
from xaiclip_cli.data.formats import INTENSITY_HELP, parse_intensity

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(value: str) -> str:
    """Normalise a device name, or raise ValueError naming the accepted forms."""
    v = value.strip().lower()
    if not _DEVICE.match(v):
        raise ValueError(f"unknown device {value!r} (use auto, cpu, cuda, cuda:N or mps)")
    return v


class ComputeSettings(XaiclipSettings):
    """Where and how a command computes: device, GPUs, seed, CPU threads, log level (no output folder)."""

    device: str = Field(
        "auto", description="Compute device: auto, cpu, cuda, cuda:N or mps (auto = cuda if available)."
    )
    gpus: list[int] = Field(
        default_factory=list,
        description="GPU ids for one worker process each, e.g. 0,1 (empty = one process on --device).",
    )
    seed: int = Field(0, description="Random seed (Python, NumPy, torch).")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: torch's choice).")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Logging level on stderr.")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        return check_device(value)

    @field_validator("gpus")
    @classmethod
    def _check_gpus(cls, value: list[int]) -> list[int]:
        if any(g < 0 for g in value):
            raise ValueError("GPU ids must be >= 0")
        if len(set(value)) != len(value):
            raise ValueError("GPU ids must be unique")
        return value


class RuntimeSettings(ComputeSettings):
    """The common runtime model: compute settings plus the folder a command writes its outputs to."""

    output_dir: Path = Field(Path("xaiclip_out"), description="Folder for the command's outputs.")


class ModelSelection(XaiclipSettings):
    """Which CLIP backend and model to load (mixed into groups that encode or explain)."""

    backend: Literal["toy", "checkpoint", "hf", "conceptclip"] = Field(
        "toy", description="Model family: toy (shipped), checkpoint (xaiclip train clip export), hf, conceptclip."
    )
    model: str | None = Field(
        None,
        description="Model: toy-vit|toy-cnn for toy, a checkpoint dir, or a Hugging Face hub id / local dir "
        "(conceptclip default JerrryNie/ConceptCLIP).",
    )
    revision: str | None = Field(None, description="Hub revision (commit) to load; conceptclip has a pinned default.")
    trust_remote_code: bool = Field(
        False, description="Run the Python code of a ConceptCLIP-style repository other than the pinned default "
        "(needs a pinned --revision commit, or a local folder).",
    )


class ImageFileSettings(XaiclipSettings):
    """How image files (PNG, TIFF, DICOM, ...) become the model's uint8 input (mixed into groups that read them)."""

    intensity: str = Field("auto", description=INTENSITY_HELP)

    @field_validator("intensity")
    @classmethod
    def _check_intensity(cls, value: str) -> str:
        return str(parse_intensity(value))
