"""The `xaiclip eval` command group (thin: settings → `xaiclip_cli.metrics.commands` → result model)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from xaiclip_cli.cli.app import group_app
from xaiclip_cli.cli.command import settings_command
from xaiclip_cli.cli.output import RunContext
from xaiclip_cli.config.eval import EvalSettings

app = group_app("Score explanations: insertion/deletion AUC, MuFidelity, localisation, zero-shot and probe scores.")

_COMMON = ["output_dir", "overwrite", "bootstrap", "seed", "log_level"]
_MODEL = ["backend", "model", "revision", "trust_remote_code", "device", "threads", "gpus"]
_MAPS = ["maps", "images", "dataset", "split", "limit"]
_TARGET = ["text", "target", "score", "batch_size"]


class EvalResult(BaseModel):
    """Evaluation result"""

    command: str
    output_dir: str
    images: int = Field(description="items planned")
    evaluated: int
    skipped: dict[str, int] = Field(default_factory=dict)
    metrics: list[dict[str, Any]] = Field(default_factory=list, description="one row per metric: mean and 95 % CI")
    tables: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    def __rich_tables__(self) -> list[Any]:
        """Scalars, the metric table, then each extra table."""
        import json

        from rich.markup import escape
        from rich.table import Table

        from xaiclip_cli.cli.output import _records_table

        head = Table(title=escape(f"eval {self.command}"), title_justify="left", show_header=False)
        head.add_column("field", style="bold")
        head.add_column("value")
        for k in ("output_dir", "images", "evaluated"):
            head.add_row(k, escape(str(getattr(self, k))))
        head.add_row("skipped", escape(json.dumps(self.skipped)) if self.skipped else "0")
        for note in self.notes:
            head.add_row("note", escape(note))
        out = [head]
        if self.metrics:
            out.append(_records_table("metrics (mean, bootstrap 95 % CI)", self.metrics))
        for name, rows in self.tables.items():
            if rows:
                out.append(_records_table(name, rows))
        return out


def _result(doc: dict[str, Any]) -> EvalResult:
    from xaiclip_cli.metrics.commands import result_fields

    return EvalResult(**result_fields(doc))


def _finish(doc: dict[str, Any], ctx: RunContext) -> EvalResult:
    from xaiclip_cli.errors import EXIT_PARTIAL

    res = _result(doc)
    skipped = doc["counts"].get("skipped") or {}
    if skipped:
        text = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items()))
        if doc["counts"].get("evaluated", 0) == 0:
            ctx.exit_code = EXIT_PARTIAL
            ctx.warn(f"nothing evaluated: every item was skipped ({text}); see per_image.csv")
        else:
            ctx.warn(f"skipped and counted, not averaged: {text}")
    for w in doc.get("extra", {}).get("warnings", []):
        ctx.warn(w)
    return res


@settings_command(app, EvalSettings, name="zeroshot",
                  fields=["h5", "splits", "family", "store_model", *_COMMON])
def zeroshot(s: EvalSettings, ctx: RunContext) -> EvalResult:
    """Zero-shot accuracy, balanced accuracy and macro AUC per label template and ensembled, per split, from a
    feature store (no model run); concept scores per image and per class when the store has concept templates."""
    from xaiclip_cli.metrics.commands import run_zeroshot

    return _finish(run_zeroshot(s), ctx)


@settings_command(app, EvalSettings, name="probe",
                  fields=["h5", "features", "family", "store_model", *_COMMON])
def probe(s: EvalSettings, ctx: RunContext) -> EvalResult:
    """Linear probe (logistic regression, C chosen on val) on stored CLS features or on concept scores (then the
    coefficients per concept and class are reported); test metrics with bootstrap intervals."""
    from xaiclip_cli.metrics.commands import run_probe

    return _finish(run_probe(s), ctx)


@settings_command(app, EvalSettings, name="smdl", fields=["results", "limit", *_COMMON])
def smdl(s: EvalSettings, ctx: RunContext) -> EvalResult:
    """Insertion/deletion AUC from the curves `attrib run` recorded (protocol (a), no model run); reads attrib OUT
    folders and the reference npy/json export alike (the reference evaluator's formula)."""
    from xaiclip_cli.metrics.commands import run_smdl

    return _finish(run_smdl(s), ctx)


_LOC_FIELDS = ["maps", "masks", "mask_kind", "dataset", "split", "limit", "thresholds", "tolerance", "tune_split",
               "tune_maps", *_COMMON]


@settings_command(app, EvalSettings, name="localization", fields=_LOC_FIELDS)
def localization(s: EvalSettings, ctx: RunContext) -> EvalResult:
    """Pointing game (TorchRay tolerance), energy pointing game with chance level, IoU/Dice@t (fixed, otsu or
    tuned on val), pixel AUPRC; per class and by mask-area tertile (no model run). Masks: --masks DIR or the
    dataset's (--mask-kind cell, or nuclei on toy cells)."""
    from xaiclip_cli.metrics.commands import run_localization

    return _finish(run_localization(s), ctx)


@settings_command(app, EvalSettings, name="localisation", fields=_LOC_FIELDS)
def localisation(s: EvalSettings, ctx: RunContext) -> EvalResult:
    """Alias of `eval localization`."""
    from xaiclip_cli.metrics.commands import run_localization

    return _finish(run_localization(s), ctx)


_MODEL_FIELDS = [*_MODEL, *_MAPS, *_TARGET, *_COMMON]


@settings_command(app, EvalSettings, name="faithfulness",
                  fields=[*_MODEL_FIELDS, "convention", "baseline", "unit", "steps", "max_fraction", "rise_step"])
def faithfulness(s: EvalSettings, ctx: RunContext) -> EvalResult:
    """Insertion and deletion AUC re-evaluated on perturbed images for any map (protocol (b)): conventions
    xaiclip|xplique|torchcam|rise, baselines black|black-min|white-max|mean|blur|noise|value:v; batched and
    resumable (one progress.<worker>.jsonl log per worker). --gpus 0,1 runs one worker process per GPU (with
    --device cpu: CPU worker processes); under torchrun/SLURM each rank takes its block and the last one to finish
    writes eval.json. Maps whose image cannot be read go to failed.jsonl (exit 3); a rerun retries them."""
    from xaiclip_cli.metrics.faithfulness_job import run

    res = run(s, ctx.progress, ctx.warn)
    out = _finish(res["doc"], ctx)
    if res["exit_code"]:
        ctx.exit_code = res["exit_code"]
    return out


@settings_command(app, EvalSettings, name="mufidelity",
                  fields=[*_MODEL_FIELDS, "baseline", "grid_size", "samples", "subset_percent", "subset",
                          "subset_size", "corr"])
def mufidelity(s: EvalSettings, ctx: RunContext) -> EvalResult:
    """MuFidelity (xplique; Bernoulli grid subsets) or Quantus-style fixed-size subsets, Spearman or Pearson,
    masks seeded per image (shared by every method on that image)."""
    from xaiclip_cli.metrics.commands import run_mufidelity

    return _finish(run_mufidelity(s), ctx)


@settings_command(app, EvalSettings, name="drop", fields=[*_MODEL_FIELDS, "ad_variant", "mask_space"])
def drop(s: EvalSettings, ctx: RunContext) -> EvalResult:
    """Average drop, increase in confidence and average gain of the image multiplied by the min-max map."""
    from xaiclip_cli.metrics.commands import run_drop

    return _finish(run_drop(s), ctx)


@settings_command(app, EvalSettings, name="sanity",
                  fields=[*_MODEL, "images", "dataset", "split", "limit", "text", "target", "method", "cam_score",
                          "target_layer", "checks", "order", "pairs", "attrib_division", "attrib_grid",
                          "attrib_region_size", "attrib_search", *_COMMON])
def sanity(s: EvalSettings, ctx: RunContext) -> EvalResult:
    """Model-parameter randomisation (cascading image tower from the top block down, text tower, independent) and
    the random-prompt test for a CAM method or for SMDL attributions (--method attrib, the region order as a rank
    map): similarity to the trained map per step, pass/fail against the band of random pairs of maps of different
    images."""
    from xaiclip_cli.metrics.commands import run_sanity

    return _finish(run_sanity(s), ctx)


@settings_command(app, EvalSettings, name="compare", fields=["results", *_COMMON])
def compare(s: EvalSettings, ctx: RunContext) -> EvalResult:
    """Paired comparison of two eval results (two methods on the same images): mean difference with its paired
    bootstrap interval and the Wilcoxon signed-rank p-value per metric; refuses results with different settings."""
    from xaiclip_cli.metrics.commands import run_compare

    return _finish(run_compare(s), ctx)
