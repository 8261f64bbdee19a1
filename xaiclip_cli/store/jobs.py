"""Settings → store stages: open the dataset and prompt set, load the backend, run one rank or spawn one per GPU."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xaiclip_cli.errors import PartialFailure, UsageError, XaiclipError
from xaiclip_cli.parallel.ranks import RankInfo, rank_from_env
from xaiclip_cli.store.image import ImageOptions, ProgressFactory, is_single_store, run_image_stage
from xaiclip_cli.store.results import StoreImageResult, StoreTextResult

log = logging.getLogger("xaiclip.store")

Advance = Callable[[int], None]


def setup_torch(threads: int | None) -> None:
    """CPU thread count for this process (encoding is deterministic: no seed)."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))


def open_dataset(s: Any) -> Any:
    """The DataSource named by --dataset (data/refs.py), capped by --limit."""
    from xaiclip_cli.data.refs import open_source

    source = open_source(s.dataset, size=s.size, data_root=s.data_root, download=s.download,
                         intensity=getattr(s, "intensity", None))
    if getattr(s, "limit", None):
        from xaiclip_cli.store.subset import HeadSource

        source = HeadSource(source, int(s.limit))
    return source


def open_prompts(ref: str) -> Any:
    """The prompt set named by --prompts (shipped name or YAML file), via data/prompts.py."""
    from xaiclip_cli.data import prompts as P

    for name in ("load_prompt_set", "load_prompts", "open_prompts"):
        fn = getattr(P, name, None)
        if callable(fn):
            return fn(ref)
    cls = getattr(P, "PromptSet", None)
    for name in ("load", "from_ref", "from_name", "from_yaml"):
        fn = getattr(cls, name, None)
        if callable(fn):
            return fn(ref)
    raise XaiclipError("data/prompts.py offers no prompt-set loader")


def load_model(s: Any, device: str) -> Any:
    """The backend named by --backend/--model/--revision on ``device``."""
    from xaiclip_cli.models.registry import load_backend

    return load_backend(s.backend, s.model, revision=s.revision, device=device,
                        trust_remote_code=bool(getattr(s, "trust_remote_code", False)))


def image_options(s: Any, rank: RankInfo, manage_index: bool) -> ImageOptions:
    """ImageOptions from StoreSettings."""
    return ImageOptions(
        h5=Path(s.h5), layout=s.layout, part_rows=s.part_rows, batch_size=s.batch_size, cls_dtype=s.cls_dtype,
        tokens=s.tokens, overwrite=s.overwrite, space_check=s.space_check, check_source=s.check_source,
        rank=rank.rank, world=rank.world, manage_index=manage_index, dataset_ref=s.dataset,
        materialize=not s.keep_parts, workers=s.workers,
    )


def run_image_rank(s: Any, rank: RankInfo, device: str, advance: Advance | None,
                   manage_index: bool, progress: ProgressFactory | None = None) -> StoreImageResult:
    """One process's share of store image."""
    setup_torch(s.threads)
    source = open_dataset(s)
    backend = load_model(s, device)
    return run_image_stage(source, backend, image_options(s, rank, manage_index), advance, progress)


def image_worker(payload: dict[str, Any], rank: int, world: int, device: str, advance: Advance) -> dict[str, Any]:
    """Entry point of a spawned worker (one per GPU): rebuild the settings, run its parts, return the result."""
    from xaiclip_cli.config.store import StoreSettings

    s = StoreSettings.model_validate(payload)
    res = run_image_rank(s, RankInfo(rank, world, rank, "spawn"), device, advance, manage_index=False)
    return res.model_dump(mode="json")


def run_store_image(s: Any, progress: ProgressFactory | None = None) -> StoreImageResult:
    """store image: a local spawn over --gpus (then merge), a rank of torchrun/SLURM, or one process.

    ``progress(total)`` opens a progress bar (total = unwritten rows; None for a spawn, whose workers plan).
    """
    env_rank = rank_from_env()
    if s.gpus and env_rank.distributed:
        raise UsageError("--gpus cannot be combined with a torchrun/SLURM launch (one process per GPU already)")
    if s.gpus and len(s.gpus) > 1:
        bar = progress(None) if progress is not None else contextlib.nullcontext(None)
        with bar as advance:
            return _spawn_image(s, advance)
    device = s.device
    if s.gpus:
        device = f"cuda:{s.gpus[0]}" if s.device in ("auto", "cuda") else s.device
    elif env_rank.distributed and s.device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{env_rank.local_rank % torch.cuda.device_count()}"
    if env_rank.distributed:
        if s.overwrite:
            raise UsageError("--overwrite is refused in a multi-process launch; delete the store first")
        res = run_image_rank(s, env_rank, device, None, manage_index=False, progress=progress)
        log.info("rank %d/%d done; after all ranks finish run: xaiclip store merge --h5 %s",
                 env_rank.rank, env_rank.world, s.h5)
        return res
    return run_image_rank(s, RankInfo(), device, None, manage_index=True, progress=progress)


def _spawn_image(s: Any, advance: Advance | None) -> StoreImageResult:
    """--gpus 0,1: one worker per GPU on parts[r::W], then the automatic merge."""
    import time

    from xaiclip_cli.parallel.spawn import spawn_workers
    from xaiclip_cli.store.index import remove_store
    from xaiclip_cli.store.merge import merge_store

    if s.layout != "sharded":
        raise UsageError("--gpus needs --layout sharded (one writer per part)")
    t0 = time.perf_counter()
    if s.overwrite:
        remove_store(Path(s.h5))
    elif is_single_store(Path(s.h5)):
        # Already one self-contained file (a finished run materialised it): resume or no-op in one process.
        return run_image_rank(s, RankInfo(), s.device, None, manage_index=True)
    payload = s.model_dump(mode="json")
    payload.update({"gpus": [], "overwrite": False})
    outcomes = spawn_workers("xaiclip_cli.store.jobs:image_worker", payload, list(s.gpus), device=s.device,
                             advance=advance)
    if any(o.exit_code == 130 for o in outcomes):
        raise KeyboardInterrupt
    usage = [o for o in outcomes if o.exit_code == 2]
    if usage and len(usage) == len(outcomes):
        raise UsageError(usage[0].error or "worker refused the store")
    merge_err: PartialFailure | None = None
    failed = [o for o in outcomes if o.exit_code != 0]
    try:
        # All parts are on this machine: like a single process, end as one self-contained file unless --keep-parts.
        merged = merge_store(s.h5, None if s.keep_parts or failed else s.h5)
    except PartialFailure as exc:
        merge_err = exc
        merged = None
    if failed:
        first = failed[0]
        raise PartialFailure(f"{len(failed)} of {len(outcomes)} workers failed (GPU {first.gpu}: {first.error}); "
                             "rerun the same command to finish")
    if merge_err is not None:
        raise merge_err
    assert merged is not None
    results = [o.result or {} for o in outcomes]
    written = sum(int(r.get("rows_written", 0)) for r in results)
    secs = time.perf_counter() - t0
    return StoreImageResult(
        h5=str(s.h5), layout=merged.layout, rows_total=merged.rows_total, rows_written=written,
        rows_skipped=sum(int(r.get("rows_skipped", 0)) for r in results), rows_done=merged.rows_done,
        complete=merged.complete, seconds=round(secs, 3), images_per_s=round(written / secs, 2) if secs else 0.0,
        parts_total=merged.parts_total, parts_complete=merged.parts_complete, rank=0, world=len(outcomes),
    )


def run_store_text(s: Any) -> StoreTextResult:
    """store text: encode the prompt set's template groups into the store."""
    from xaiclip_cli.store.text import run_text_stage

    setup_torch(s.threads)
    prompts = open_prompts(s.prompts)
    backend = load_model(s, s.device)
    return run_text_stage(prompts, backend, s.h5, only=s.only, clear=s.clear, force=s.force, overwrite=s.overwrite,
                          tokens=s.tokens, max_length=s.max_length, batch_size=s.batch_size)
