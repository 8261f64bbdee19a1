"""A small Typer app built with settings_command, used by the CLI-machinery tests (also runnable as a script)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar, Literal

import typer
from pydantic import BaseModel, Field

from xaiclip_cli.cli.command import settings_command
from xaiclip_cli.cli.output import RunContext
from xaiclip_cli.config.base import Section, group_config, save_config
from xaiclip_cli.config.common import RuntimeSettings
from xaiclip_cli.errors import PartialFailure, UsageError, XaiclipError


class Optim(Section):
    """Nested section."""

    lr: float = Field(1e-3, description="Learning rate.")
    batch_size: int = Field(8, ge=1, description="Batch size.")


class DemoSettings(RuntimeSettings):
    """Settings of the demo group (uses the attrib env prefix, like a real group)."""

    group: ClassVar[str] = "attrib"
    model_config = group_config("attrib")

    mode: Literal["ok", "runtime", "usage", "partial", "interrupt", "crash", "sleep", "warn"] = Field(
        "ok", description="What the command does.")
    texts: list[str] = Field(default_factory=list, description="Texts.", json_schema_extra={"cli_multiple": True})
    ratio: float = Field(0.5, ge=0, le=1, description="A ratio.")
    flag: bool = Field(False, description="A flag.")
    optim: Optim = Field(default_factory=Optim)


class DemoResult(BaseModel):
    """Demo result."""

    mode: str
    gpus: list[int]
    texts: list[str]
    lr: float
    batch_size: int
    rows: list[dict]


app = typer.Typer(rich_markup_mode=None, pretty_exceptions_enable=False)


@settings_command(app, DemoSettings, fields=["mode", "texts", "ratio", "flag", "gpus", "device", "seed", "threads",
                                             "output_dir", "log_level", "optim.lr", "optim.batch_size"])
def run(s: DemoSettings, ctx: RunContext) -> DemoResult:
    """Run the demo."""
    if s.mode == "runtime":
        raise XaiclipError(f"cannot read {s.output_dir / 'x.h5'}: file is truncated")
    if s.mode == "usage":
        raise UsageError("--ratio must be given with --flag")
    if s.mode == "interrupt":
        raise KeyboardInterrupt
    if s.mode == "crash":
        raise ZeroDivisionError("boom")
    if s.mode == "sleep":
        Path(s.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(s.output_dir) / "started").write_text("1")
        time.sleep(60)
    if s.mode == "warn":
        ctx.warn("something odd [x]")
    save_config(s, s.output_dir)
    result = DemoResult(mode=s.mode, gpus=s.gpus, texts=s.texts, lr=s.optim.lr, batch_size=s.optim.batch_size,
                        rows=[{"name": "a[1]", "value": 1.5}, {"name": "b", "value": None}])
    if s.mode == "partial":
        ctx.exit_code = PartialFailure.exit_code
    return result


@settings_command(app, DemoSettings, fields=["mode"])
def other(s: DemoSettings, ctx: RunContext) -> None:
    """Second command of the demo group."""


if __name__ == "__main__":
    app()
