"""The ``xaiclip train clip`` command (contrastive image–text training), registered on the train group."""

from __future__ import annotations

from typing import Any

import typer
from pydantic import BaseModel, Field

from xaiclip_cli.cli.command import settings_command
from xaiclip_cli.cli.output import RunContext
from xaiclip_cli.config.train_clip import ClipTrainSettings


class ClipTrainResult(BaseModel):
    """CLIP training run"""

    run_dir: str
    export_dir: str | None = None
    export_to: str | None = None
    finished: bool = True
    epochs_run: int = 0
    best_epoch: int = -1
    select_metric: str = ""
    best_value: float | None = None
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    params: int | None = None
    seconds: float | None = None
    val: dict[str, float] = Field(default_factory=dict)
    test: dict[str, float] = Field(default_factory=dict)


def register(app: typer.Typer) -> None:
    """Add ``clip`` to the train group app."""

    @settings_command(app, ClipTrainSettings, name="clip")
    def clip(s: ClipTrainSettings, ctx: RunContext) -> ClipTrainResult:
        """Train a small CLIP (timm image tower + BERT-style text tower) on image–text pairs or labelled images.

        Labelled data (toycells, medmnist:<flag>) is paired with prompts (--templates with {label}, --prompts YAML);
        --pairs CSV gives captions directly. Writes a run dir under --output-dir (config.yaml, metrics.csv,
        results.json, checkpoints/last.pt and best.pt, export/) and, with --export-to, a copy of export/ that the
        checkpoint backend loads (--backend checkpoint --model DIR). Without --config the shipped toy-vit recipe is
        the default (a 64-px ViT on the toy cells, minutes on a CPU); --config takes a file or a shipped name
        (toy-vit, toy-cnn) from any folder. Example: xaiclip train clip --config toy-cnn --export-to my-toy-cnn
        """
        from xaiclip_cli.train.clip import train_clip

        result: dict[str, Any] = train_clip(s, progress=ctx.progress)
        if not result.get("finished", True):
            ctx.warn("training stopped before the last epoch; resume with --resume --name "
                     f"{result['run_dir'].rsplit('/', 1)[-1]}")
        return ClipTrainResult(**{k: v for k, v in result.items() if k in ClipTrainResult.model_fields})
