"""`xaiclip eval report`: one self-contained HTML report from store files and cam/attrib/eval output folders."""

from __future__ import annotations

import sys
from typing import Any

from pydantic import BaseModel, Field

from xaiclip_cli.cli.command import settings_command
from xaiclip_cli.cli.eval import app
from xaiclip_cli.cli.output import RunContext
from xaiclip_cli.config.report import ReportSettings


class ReportResult(BaseModel):
    """eval report: the file written and what went into it."""

    out: str
    bytes: int
    inputs: list[dict[str, Any]] = Field(default_factory=list)
    gallery_items: int = 0
    gallery_shown: int = 0
    sort_by: str | None = None
    metrics: list[str] = Field(default_factory=list)
    curve_panels: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    def __rich_tables__(self) -> list[Any]:
        """Without --json the command prints only the report's path (scripts and `make demo` read it)."""
        sys.stdout.write(self.out + "\n")
        return []


@settings_command(app, ReportSettings, name="report", arguments=["runs"])
def report(s: ReportSettings, ctx: RunContext) -> ReportResult:
    """Write one self-contained HTML report (no network needed to open it) from the folders given.

    Any mix of store files (.h5) and `cam run`, `attrib run` and `eval` output folders: provenance and configs,
    dataset-level metric tables with their bootstrap intervals, mean insertion/deletion and sanity curves, and a
    per-image gallery sortable by a metric (worst first). Prints the report's path; --json prints what went in.
    Example: xaiclip eval report out/cam out/eval_faithfulness --out report.html
    """
    from xaiclip_cli.viz.report import build_report

    summary = build_report(s.runs, s.out, max_images=s.max_images, thumb=s.thumb, sort_by=s.sort_by,
                           overwrite=s.overwrite, warn=ctx.warn)
    return ReportResult(**summary)
