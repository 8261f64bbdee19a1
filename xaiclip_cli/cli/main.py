"""Root ``xaiclip`` command: joins the six groups and answers ``--version``."""

from __future__ import annotations

import typer

from xaiclip_cli import __version__
from xaiclip_cli.cli import attrib, cam, db, eval_report, store, train  # noqa: F401  (eval_report registers itself)
from xaiclip_cli.cli import eval as eval_group

app = typer.Typer(
    name="xaiclip",
    help="Explain CLIP-style medical image models: feature library, heatmaps, attribution, metrics, training.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"xaiclip {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """xaiclip: one command for explainable medical CLIP work."""


app.add_typer(store.app, name="store")
app.add_typer(db.app, name="db")
app.add_typer(cam.app, name="cam")
app.add_typer(attrib.app, name="attrib")
app.add_typer(eval_group.app, name="eval")
app.add_typer(train.app, name="train")


def main() -> None:
    """Console-script entry point."""
    app()
