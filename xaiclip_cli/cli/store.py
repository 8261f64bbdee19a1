"""The `xaiclip store` command group: store text, store image, store merge."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from xaiclip_cli.cli.app import group_app
from xaiclip_cli.cli.command import settings_command
from xaiclip_cli.cli.output import RunContext
from xaiclip_cli.config.base import save_config
from xaiclip_cli.config.store import StoreSettings

app = group_app("Encode prompts and images with a CLIP-style model into an HDF5 feature library.")

_MODEL = ["backend", "model", "revision", "trust_remote_code"]
_RUNTIME = ["device", "threads", "log_level"]


def _save(s: StoreSettings, stage: str) -> str:
    from xaiclip_cli.store import layout as L

    p = L.config_path(s.h5, stage)
    return str(save_config(s, p.parent, p.name))


@settings_command(app, StoreSettings, name="text", fields=[
    "h5", *_MODEL, "prompts", "only", "clear", "force", "overwrite", "tokens", "max_length", "batch_size",
    *_RUNTIME,
])
def text(s: StoreSettings, ctx: RunContext) -> BaseModel | None:
    """Encode the prompt set's templates into templates/ of the store (concept_prompts_tNN, label_prompts_tNN).

    Groups whose texts and model are unchanged are skipped (--force rewrites them); groups no longer in the
    prompt set are removed. The settings are saved as <h5>.text.config.yaml beside the store.
    """
    from xaiclip_cli.store.jobs import run_store_text

    result = run_store_text(s)
    result.config = _save(s, "text")
    for w in result.warnings:
        ctx.warn(w)
    return result


@settings_command(app, StoreSettings, name="image", fields=[
    "h5", *_MODEL, "dataset", "intensity", "size", "data_root", "download", "limit", "layout", "part_rows",
    "keep_parts", "tokens", "cls_dtype", "batch_size", "workers", "overwrite", "space_check", "check_source", "gpus",
    *_RUNTIME,
])
def image(s: StoreSettings, ctx: RunContext) -> BaseModel | None:
    """Encode every image of a dataset into the store: CLS features, token features and row columns.

    Resumable: a killed run restarted with the same command writes only the missing rows; a complete store is a
    no-op. The sharded layout writes immutable parts while it runs (crash safety) and ends as one self-contained
    .h5 (--keep-parts keeps the linked index and its parts folder). --limit N keeps the first N images of each
    split (a quick look; rerunning without it needs --overwrite).
    --gpus 0,1 runs one worker per GPU and merges (with --device cpu: CPU worker processes, for testing); under
    torchrun/SLURM each rank writes its own parts (run `xaiclip store merge` afterwards). The settings are saved as
    <h5>.image.config.yaml beside the store. A reader holding the store open makes the writer wait up to 10 s.
    """
    from xaiclip_cli.parallel.ranks import rank_from_env
    from xaiclip_cli.store.jobs import run_store_image

    Path(s.h5).parent.mkdir(parents=True, exist_ok=True)
    result = run_store_image(s, lambda total: ctx.progress(total, f"store image → {s.h5}", unit="img"))
    if rank_from_env().rank == 0:
        result.config = _save(s, "image")
    result.warnings = list(ctx.warnings)
    return result


@settings_command(app, StoreSettings, name="merge", fields=["h5", "materialize", "overwrite", "log_level"])
def merge(s: StoreSettings, ctx: RunContext) -> BaseModel | None:
    """Check every part of a sharded store (fingerprint, complete, row counts) and rebuild the index.

    Run after a multi-node store image; rerunnable. --materialize OUT also writes a self-contained
    single-file copy (--materialize naming --h5 itself replaces the index and deletes the parts). A store renamed
    with its parts folder is relinked. Exit 3 when some parts are not finished yet.
    """
    from xaiclip_cli.store.merge import merge_store

    return merge_store(s.h5, s.materialize, overwrite=s.overwrite)
