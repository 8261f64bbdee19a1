"""The `xaiclip attrib` command group: run, merge, baseline, show, export (thin: settings → library → result)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from xaiclip_cli.cli.app import group_app
from xaiclip_cli.cli.command import settings_command
from xaiclip_cli.cli.output import RunContext
from xaiclip_cli.config.attrib import AttribSettings
from xaiclip_cli.errors import UsageError

app = group_app("Submodular region attribution (Less is More, ICLR 2024) with GPU and multi-node sharding.")

_MODEL = ["backend", "model", "revision", "trust_remote_code", "classifier", "device", "gpus", "seed", "threads",
          "log_level"]
_CLASSES = ["text", "classes", "templates", "text_features", "h5", "template", "target", "logit_scale", "score"]
_INPUTS = ["images", "intensity", "recursive", "list_file", "image_root", "begin", "end", "dataset", "split", "limit"]
_RUN = [*_MODEL, *_CLASSES, *_INPUTS, "division", "region_size", "grid", "prior", "prior_grid", "cells_per_region",
        "sam_masks", "search", "lazy", "pending", "lazy_batch", "lazy_refresh", "lazy_stale", "lazy_budget", "k",
        "lambdas", "fill", "max_batch", "bgr_compat", "amp", "record_candidates", "record_counterfactual", "output_dir",
        "export_smdl", "overwrite"]


class AttribRunResult(BaseModel):
    """attrib run: what was attributed and where the results are."""

    output_dir: str
    model: str | None = None
    score: str
    logit_scale: float | None
    image_size: int
    classes: int
    regions_first: int | None
    planned: int
    skipped: int
    done: int
    failed: int
    forwards: int
    workers: int
    seconds: float
    images_per_s: float
    failures: list[dict[str, Any]] = Field(default_factory=list)


class AttribMergeResult(BaseModel):
    """attrib merge: completeness and mean recorded AUCs."""

    runs: list[str]
    planned: int
    complete: int
    missing: int
    insertion_auc_mean: float | None
    deletion_auc_mean: float | None
    forwards_total: int
    missing_items: list[str] = Field(default_factory=list)


class AttribBaselineResult(BaseModel):
    """attrib baseline: saliency maps written."""

    output_dir: str
    method: str
    image_size: int
    planned: int
    skipped: int
    done: int
    failed: int
    seconds: float
    failures: list[dict[str, Any]] = Field(default_factory=list)


class AttribShowResult(BaseModel):
    """attrib show: per-result AUCs, the maximum objective's index and the figure written."""

    run: str
    out: str | None
    failed: int
    items: list[dict[str, Any]] = Field(default_factory=list)
    failures: list[dict[str, Any]] = Field(default_factory=list)


class AttribExportResult(BaseModel):
    """attrib export: the reference npy/json tree."""

    out: str
    exported: int
    failed: int
    failures: list[dict[str, Any]] = Field(default_factory=list)


@settings_command(app, AttribSettings, name="run", fields=_RUN)
def run(s: AttribSettings, ctx: RunContext) -> AttribRunResult:
    """Rank every sub-region of each image by submodular subset selection (SMDL; LIMA bidirectional; lazy).

    Results go to OUT/items/<target>/<rel-stem>.npz with a .json sidecar and a .done marker (written last; a rerun
    skips marked items), run.json holds the resolved configuration, shards/ the per-worker counts, failed.jsonl
    per-image failures (exit 3; exit 1 when none succeeded). --gpus 0,1 runs one worker per GPU; torchrun/SLURM
    ranks take blocks of the list. With no arguments: the toy model on one toy cell. Example:
    xaiclip attrib run --list val.txt --image-root imgs/ --classes cat,dog --division slico --gpus 0,1
    """
    from xaiclip_cli.explain.attrib_job import run_attrib

    stats = run_attrib(s, ctx.progress, ctx.warn)
    ctx.exit_code = stats["exit_code"]
    if not ctx.json and not ctx.quiet:
        import logging

        logging.getLogger("xaiclip.attrib").info("results in %s (xaiclip attrib show %s)", stats["output_dir"],
                                                 stats["output_dir"])
    sec = stats["seconds"]
    return AttribRunResult(
        output_dir=stats["output_dir"], model=stats["model"], score=stats["score"], logit_scale=stats["logit_scale"],
        image_size=stats["image_size"], classes=stats["classes"], regions_first=stats["regions_first"],
        planned=stats["planned"], skipped=stats["skipped"], done=stats["done"], failed=stats["failed"],
        forwards=stats["forwards"], workers=stats["workers"], seconds=round(sec, 3),
        images_per_s=round(stats["done"] / sec, 4) if sec > 0 and stats["done"] else 0.0,
        failures=stats["failures"][:50],
    )


@settings_command(app, AttribSettings, name="merge", fields=["allow_partial", "log_level"], arguments=["runs"])
def merge(s: AttribSettings, ctx: RunContext) -> AttribMergeResult:
    """Check run folders (same configuration; every planned item has a marker and a readable npz) and write
    index.jsonl (list order) and summary.json (counts, mean insertion/deletion AUC) into the first folder.

    Missing items are listed and exit 3 (--allow-partial: 0). Example: xaiclip attrib merge out_node0 out_node1
    """
    from xaiclip_cli.explain.attrib_job import merge_runs

    summary = merge_runs(list(s.runs), s.allow_partial)
    ctx.exit_code = summary["exit_code"]
    if summary["missing"]:
        ctx.warn(f"{summary['missing']} planned item(s) missing, e.g. {', '.join(summary['missing_items'][:3])}")
    return AttribMergeResult(**{k: summary[k] for k in AttribMergeResult.model_fields})


@settings_command(app, AttribSettings, name="baseline",
                  fields=["method", "rise_n", "lime_samples", *_MODEL, *_CLASSES, *_INPUTS, "fill", "bgr_compat",
                          "output_dir", "overwrite"])
def baseline(s: AttribSettings, ctx: RunContext) -> AttribBaselineResult:
    """Saliency maps of the target class probability (gradcam, scorecam, lime, rise, gradient) as float32 [S,S]
    OUT/maps/<method>/<target>/<rel-stem>.npy: priors for --division prior-patch and inputs for eval.

    Example: xaiclip attrib baseline --method rise --dataset toycells --limit 4 --output-dir maps_out
    """
    from xaiclip_cli.explain.attrib_job import run_baseline

    stats = run_baseline(s, ctx.progress, ctx.warn)
    ctx.exit_code = stats["exit_code"]
    return AttribBaselineResult(**{k: stats[k] for k in AttribBaselineResult.model_fields if k in stats})


@settings_command(app, AttribSettings, name="show", fields=["out", "top_m", "smooth", "log_level"],
                  arguments=["run_dir"])
def show(s: AttribSettings, ctx: RunContext) -> AttribShowResult:
    """One PNG per result (region borders, ranked heat map, insertion/deletion curves with the maximum, top kept
    regions) into --out (default RUN/figures), and a per-image summary (AUCs, index of the maximum objective).

    Example: xaiclip attrib show attrib_results --json
    """
    from xaiclip_cli.explain.attrib_job import show_run

    if s.run_dir is None:
        raise UsageError("give the run folder: xaiclip attrib show RUN")
    res = show_run(s.run_dir, s.out, s.top_m, s.smooth)
    if res["failed"]:
        ctx.exit_code = 3 if res["items"] else 1
    return AttribShowResult(**res)


@settings_command(app, AttribSettings, name="export", fields=["out", "log_level"], arguments=["run_dir"])
def export(s: AttribSettings, ctx: RunContext) -> AttribExportResult:
    """Write the reference npy/json tree (<division>-<λ1..λ4>/npy|json/<target>/<stem>) of a run, so the reference
    evaluator runs on it unchanged (needs the images; ~7 MB per 224-px image).

    Example: xaiclip attrib export attrib_results --out smdl_export
    """
    from xaiclip_cli.explain.attrib_job import export_run

    if s.run_dir is None:
        raise UsageError("give the run folder: xaiclip attrib export RUN --out DIR")
    if s.out is None:
        raise UsageError("--out DIR is required (where the reference tree goes)")
    res = export_run(s.run_dir, s.out)
    if res["failed"]:
        ctx.exit_code = 3 if res["exported"] else 1
    return AttribExportResult(**res)
