"""Settings of `xaiclip eval report`: which output folders go into the HTML report and how big it may grow."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator

from xaiclip_cli.config.base import XaiclipSettings, group_config


class ReportSettings(XaiclipSettings):
    """Inputs (store files, cam/attrib/eval output folders), output file, gallery size and order."""

    group: ClassVar[str] = "eval"
    model_config = group_config("eval")

    runs: list[Path] = Field(
        default_factory=list,
        description="Store files (.h5) and `cam run`, `attrib run` or `eval` output folders, in any mix.",
    )
    out: Path = Field(Path("report.html"), description="The HTML file to write.")
    max_images: int = Field(
        200, ge=0, description="Gallery items shown with pictures; the rest are listed by name."
    )
    thumb: int = Field(96, ge=16, le=1024, description="Thumbnail size in pixels (longest side).")
    sort_by: str | None = Field(
        None, description="Per-image metric the gallery starts sorted by, worst first (default: the first metric)."
    )
    overwrite: bool = Field(False, description="Replace an existing report file.")

    @field_validator("out")
    @classmethod
    def _html_name(cls, value: Path) -> Path:
        if not str(value).strip() or value.name in ("", ".", ".."):
            raise ValueError("must be a file name, e.g. report.html")
        return value
