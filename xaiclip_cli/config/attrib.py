"""Settings of the `attrib` group (run, merge, baseline, show, export): submodular region attribution (smdl.md)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from xaiclip_cli.config.base import group_config
from xaiclip_cli.config.common import ImageFileSettings, ModelSelection, RuntimeSettings

# Fields that change how a run executes, not what it computes: a rerun differing only in these is a resume, and
# `attrib merge` accepts shards that differ only in these.
EXECUTION_FIELDS = frozenset({
    "overwrite", "log_level", "threads", "gpus", "device", "limit", "begin", "end", "max_batch", "export_smdl",
    "output_dir", "images", "list_file", "image_root", "dataset", "split", "recursive", "runs", "allow_partial",
    "method", "out", "top_m", "smooth", "run_dir", "rise_n", "lime_samples",
})
DEFAULT_LIMIT = 1  # `attrib run` with no inputs: toy cells, this many images (seconds on a CPU)


class AttribSettings(ModelSelection, ImageFileSettings, RuntimeSettings):
    """Which model, targets, images, division, search and objective; where results go."""

    group: ClassVar[str] = "attrib"
    model_config = group_config("attrib")

    # --- model ---
    classifier: Path | None = Field(
        None, description="A `xaiclip train fit` run folder (its checkpoints/best.pt) or a .pt checkpoint: explain "
        "this classifier instead of a CLIP backend.",
    )
    # --- targets (class set) ---
    text: list[str] = Field(
        default_factory=list, description="A class prompt (repeat the flag; each prompt is one class).",
        json_schema_extra={"cli_multiple": True},
    )
    classes: list[str] = Field(
        default_factory=list, description="Class names (comma list or repeated), encoded with --templates.",
        json_schema_extra={"cli_multiple": True},
    )
    templates: list[str] = Field(
        default_factory=list, description="Prompt templates with {} for the class name (repeatable; default "
        "'a photo of a {}'). Per class: encode each, normalise, average, renormalise.",
        json_schema_extra={"cli_multiple": True},
    )
    text_features: Path | None = Field(
        None, description="Unit class features [C,d] .npy (names from --classes, else 0..C-1).",
    )
    h5: Path | None = Field(None, description="Feature store whose --template group gives the class features.")
    template: str | None = Field(None, description="Template group of --h5, e.g. label_prompts_t01.")
    target: str | None = Field(
        None, description="Target of every image: a class index or name, 'label' (the list's or dataset's label; "
        "default with --list/--dataset) or 'pred' (the predicted class; default with --images).",
    )
    logit_scale: float | None = Field(
        None, gt=0, description="s in softmax(s·cos) (default: the model's exp(logit_scale); always recorded)."
    )
    score: Literal["softmax", "sigmoid"] | None = Field(
        None, description="Class probabilities: softmax over classes, or sigmoid per class (SigLIP); default from "
        "the backend's score family."
    )
    # --- inputs ---
    images: list[Path] = Field(
        default_factory=list, description="Image files, folders or globs (repeat the flag for several).",
        json_schema_extra={"cli_multiple": True},
    )
    recursive: bool = Field(False, description="Walk folders given to --images recursively.")
    list_file: Path | None = Field(
        None, description="Eval list: '<relative path> <target>' lines (split at the last space) or CSV "
        "path,target; blank and # lines are dropped before indexing.", json_schema_extra={"cli_name": "list"},
    )
    image_root: Path | None = Field(None, description="Folder that relative --list paths are under (default: "
                                    "the list's folder).")
    begin: int = Field(0, description="First --list entry (0-based, after dropping blank/# lines).")
    end: int | None = Field(None, description="Stop before this --list entry (default: the end).")
    dataset: str | None = Field(
        None, description="Dataset instead of --images: toycells, medmnist:<flag>, folder:<dir> or csv:<file>."
    )
    split: Literal["train", "val", "test"] = Field("test", description="Split of --dataset to explain.")
    limit: int | None = Field(None, ge=1, description="Explain at most this many images (after --begin/--end).")
    # --- division ---
    division: Literal["slico", "seeds", "grid", "prior-patch", "sam"] = Field(
        "slico", description="Sub-regions: slico, seeds, grid, prior-patch (--prior maps) or sam (--sam-masks)."
    )
    region_size: str = Field("auto", description="SLICO region size in pixels; auto = round(30·S/224).")
    grid: int = Field(10, ge=1, description="grid: N×N cells.")
    prior: Path | None = Field(None, description="prior-patch: folder of [H,W] .npy maps named like the outputs "
                               "(<target>/<rel-stem>.npy as `attrib baseline` writes, or <rel-stem>.npy).")
    prior_grid: int = Field(10, ge=1, description="prior-patch: maps resized to G×G cells.")
    cells_per_region: int = Field(4, ge=1, description="prior-patch: consecutive cells per element.")
    sam_masks: Path | None = Field(None, description="sam: folder of <rel-stem>.npz files with bool masks[M,H,W].")
    # --- search and objective ---
    search: Literal["exact", "bidirectional", "lazy"] = Field("exact", description="exact greedy, bidirectional "
                                                               "(LIMA) or lazy greedy.")
    lazy: bool = Field(False, description="bidirectional: lazy front search as well.")
    pending: int = Field(8, ge=1, description="bidirectional: back-list candidates P.")
    lazy_batch: int = Field(4, ge=1, description="lazy: stale candidates re-evaluated per round.")
    lazy_refresh: int = Field(10, ge=1, description="lazy: full refresh every this many steps.")
    lazy_stale: float = Field(0.03, ge=0.0, description="lazy: also refresh all after a step whose top stale bound "
                              "exceeded the picked fresh gain by more than this (objective units).")
    lazy_budget: float = Field(1 / 3, ge=0.0, le=1.0, description="lazy: share of exact's forwards the stale "
                               "refreshes and extra batches may bring the image to (0 = no cap).")
    k: int | None = Field(None, ge=1, description="Stop after k regions (default: rank all).")
    lambdas: list[float] = Field(
        default_factory=lambda: [0.0, 0.05, 1.0, 1.0],
        description="λ1..λ4 of confidence, effectiveness, consistency, collaboration.",
    )
    fill: Literal["black", "mean", "blur"] = Field("black", description="What removed regions become.")
    max_batch: int = Field(0, ge=0, description="Images per forward (0 = whole side per batch).")
    bgr_compat: bool = Field(False, description="Feed BGR like the reference CLIP scripts (parity).")
    amp: Literal["bf16"] | None = Field(None, description="bf16 autocast for fast modes (exact stays fp32).")
    record_candidates: bool = Field(False, description="Keep every evaluated candidate's terms.")
    record_counterfactual: bool = Field(False, description="Also record the predicted class's curve when the "
                                        "prediction differs from the target.")
    # --- outputs ---
    output_dir: Path = Field(Path("attrib_results"), description="Run folder (run.json, items/, shards/).")
    export_smdl: Path | None = Field(None, description="Also write the reference npy/json tree here.")
    overwrite: bool = Field(False, description="Redo items with a done marker; replace a different run's config.")
    # --- merge / show / export / baseline ---
    runs: list[Path] = Field(default_factory=list, description="Run folders to merge.")
    allow_partial: bool = Field(False, description="merge: exit 0 even when planned items are missing.")
    run_dir: Path | None = Field(None, description="A run folder written by `attrib run`.")
    out: Path | None = Field(None, description="Output folder (show: default RUN/figures; export: required).")
    top_m: int = Field(5, ge=1, description="show: kept regions drawn.")
    smooth: float = Field(0.0, ge=0, description="show: Gaussian σ of the ranked heat map (0 = none).")
    method: Literal["gradcam", "scorecam", "lime", "rise", "gradient"] = Field(
        "gradcam", description="baseline: saliency method."
    )
    rise_n: int = Field(4000, ge=1, description="baseline rise: random masks (reference classifier runs; Quilt 500).")
    lime_samples: int = Field(1000, ge=1, description="baseline lime: perturbed samples.")

    @field_validator("classes", mode="after")
    @classmethod
    def _split_classes(cls, value: list[str]) -> list[str]:
        out = [c.strip() for v in value for c in str(v).split(",")]
        if any(not c for c in out):
            raise ValueError("class names must not be empty")
        return out

    @field_validator("region_size")
    @classmethod
    def _region_size(cls, value: str) -> str:
        v = str(value).strip().lower()
        if v != "auto" and not (v.isdigit() and int(v) >= 2):
            raise ValueError("must be auto or an integer >= 2")
        return v

    @field_validator("lambdas")
    @classmethod
    def _lambdas(cls, value: list[float]) -> list[float]:
        if len(value) != 4:
            raise ValueError(f"needs 4 values λ1,λ2,λ3,λ4 (got {len(value)})")
        return [float(x) for x in value]

    @field_validator("begin", "end")
    @classmethod
    def _non_negative(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError("must be >= 0 (negative entry indices are not supported; omit --end for the end)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AttribSettings:
        if self.end is not None and self.begin > self.end:
            raise ValueError(f"--begin {self.begin} is after --end {self.end}")
        given = [n for n, v in (("--images", self.images), ("--list", self.list_file), ("--dataset", self.dataset))
                 if v]
        if len(given) > 1:
            raise ValueError(f"give one of --images, --list, --dataset (got {' and '.join(given)})")
        sources = [n for n, v in (("--text", self.text), ("--text-features", self.text_features),
                                  ("--h5", self.h5), ("--classifier", self.classifier)) if v]
        if len(sources) > 1:
            raise ValueError(f"give one class source (got {' and '.join(sources)})")
        if self.h5 is not None and not self.template:
            raise ValueError("--h5 needs --template (see `xaiclip db templates`)")
        return self
