"""Command-line layer: Typer apps, one module per group; imports the library lazily inside commands."""
