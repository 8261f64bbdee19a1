"""Output conventions: data on stdout (rich tables or one JSON document), logs and progress on stderr, exit codes."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from xaiclip_cli.errors import EXIT_OK


def _stdout_console() -> Console:
    # A pipe gets a wide console so that tables are not folded for scripts that grep them.
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200, highlight=False)


def stderr_console() -> Console:
    """Console for logs, warnings and progress (never stdout)."""
    return Console(file=sys.stderr, highlight=False)


@dataclass
class RunContext:
    """What a command needs to know about how it was called: JSON mode, quiet, debug, exit code to report."""

    json: bool = False
    quiet: bool = False
    debug: bool = False
    exit_code: int = EXIT_OK
    warnings: list[str] = field(default_factory=list)

    @property
    def show_progress(self) -> bool:
        """Progress bars only on a terminal and never with --json/--quiet."""
        return not (self.json or self.quiet) and sys.stderr.isatty()

    @contextlib.contextmanager
    def progress(self, total: int | None, description: str, unit: str = "items") -> Iterator[Callable[[int], None]]:
        """Yield ``advance(n)``; draws one rich bar on stderr when enabled, otherwise does nothing."""
        if not self.show_progress:
            yield lambda n=1: None
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=stderr_console(), transient=False) as bar:
            task = bar.add_task(escape(description), total=total, rate="")

            def advance(n: int = 1) -> None:
                bar.update(task, advance=n)
                speed = bar.tasks[task].speed
                if speed:
                    bar.update(task, rate=f"{speed:.1f} {unit}/s")

            yield advance

    def warn(self, message: str) -> None:
        """Log a warning on stderr and keep it for the result."""
        self.warnings.append(message)
        logging.getLogger("xaiclip").warning(message)


def configure_logging(level: str = "info", quiet: bool = False) -> None:
    """Send library logs to stderr through rich; --quiet shows warnings and errors only."""
    from rich.logging import RichHandler

    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_xaiclip", False):
            root.removeHandler(h)
    handler = RichHandler(console=stderr_console(), show_path=False, show_time=False, markup=False)
    handler._xaiclip = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    lvl = logging.WARNING if quiet else getattr(logging, level.upper(), logging.INFO)
    root.setLevel(lvl)
    # Third-party chatter stays at warning unless the user asks for debug.
    for noisy in ("urllib3", "filelock", "h5py", "PIL", "matplotlib", "httpx", "huggingface_hub", "transformers"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if lvl <= logging.DEBUG else logging.WARNING)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return escape(json.dumps(value, ensure_ascii=False))
    if value is None:
        return "-"
    return escape(str(value))


def _records_table(title: str, rows: list[dict[str, Any]]) -> Table:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    table = Table(title=escape(title), title_justify="left")
    for c in cols:
        table.add_column(escape(c))
    for r in rows:
        table.add_row(*[_cell(r.get(c)) for c in cols])
    return table


def result_tables(result: BaseModel) -> list[Table]:
    """Render a result model generically: scalars as one key/value table, each list of records as its own table."""
    data = result.model_dump(mode="json")
    doc = (type(result).__doc__ or type(result).__name__).strip().splitlines()[0]
    title = getattr(result, "table_title", None) or doc
    scalars = Table(title=escape(title), title_justify="left", show_header=False)
    scalars.add_column("field", style="bold")
    scalars.add_column("value")
    tables: list[Table] = []
    n_scalar = 0
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append(_records_table(key, value))
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            tables.append(_records_table(key, [{"name": k, **v} for k, v in value.items()]))
        else:
            scalars.add_row(escape(key), _cell(value))
            n_scalar += 1
    return ([scalars] if n_scalar else []) + tables


def emit(result: BaseModel | None, ctx: RunContext) -> None:
    """Write a command's result to stdout: exactly one JSON document with --json, else rich tables."""
    if result is None:
        return
    if ctx.json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        sys.stdout.flush()
        return
    if ctx.quiet:
        return
    console = _stdout_console()
    render = getattr(result, "__rich_tables__", None)
    tables = render() if callable(render) else result_tables(result)
    for t in tables:
        console.print(t)
