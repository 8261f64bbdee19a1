"""Settings of the `eval` group: which maps/results/store to score, the metric protocol, bootstrap and outputs."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from xaiclip_cli.config.base import group_config
from xaiclip_cli.config.common import ModelSelection, RuntimeSettings


class EvalSettings(ModelSelection, RuntimeSettings):
    """Inputs (maps, attrib results, masks, feature store, images), protocol options, statistics and outputs."""

    group: ClassVar[str] = "eval"
    model_config = group_config("eval")

    output_dir: Path = Field(Path("xaiclip_eval"), description="Folder for eval.json, per_image.csv, curves.npz.")
    overwrite: bool = Field(False, description="Replace results already in --output-dir.")
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for the 95 % intervals (0 = none).")
    # --- inputs ---
    maps: list[Path] = Field(
        default_factory=list, description="Maps: cam run folders/npz, attrib OUT folders (orders as rank maps), "
        "attrib baseline .npy, or any folder of H×W .npy (repeat the flag for several).",
        json_schema_extra={"cli_multiple": True},
    )
    results: list[Path] = Field(
        default_factory=list, description="smdl: attrib OUT folders (items/<target>/<stem>.npz) or reference "
        "export folders (npy/ + json/); compare: two eval result folders. Repeat the flag for several.",
        json_schema_extra={"cli_multiple": True},
    )
    images: list[Path] = Field(
        default_factory=list, description="Image files/folders paired with maps by file stem (when the map's "
        "sidecar names no image).", json_schema_extra={"cli_multiple": True},
    )
    dataset: str | None = Field(
        None, description="Dataset of the images/masks when sidecars do not name them: toycells, medmnist:<flag>, "
        "folder:<dir>, csv:<file>.",
    )
    split: Literal["train", "val", "test"] = Field("test", description="Split of --dataset.")
    limit: int | None = Field(None, ge=1, description="Evaluate at most this many maps (sorted by name).")
    masks: Path | None = Field(
        None, description="localization: folder of <image stem>.png|.npy masks (default: the dataset's masks).",
    )
    h5: Path | None = Field(None, description="zeroshot/probe: the feature store (HDF5 index file).")
    store_model: str | None = Field(
        None, description="zeroshot/probe: refuse a store whose model_id differs from this one."
    )
    splits: list[str] = Field(
        default_factory=lambda: ["train", "val", "test"], description="zeroshot: splits to score."
    )
    family: Literal["auto", "softmax", "sigmoid"] = Field(
        "auto", description="zeroshot: probability family (auto: sigmoid when the store records a logit bias)."
    )
    features: Literal["global", "concepts"] = Field(
        "global", description="probe: image CLS features or concept scores (the interpretable classifier)."
    )
    # --- scores and targets (model-based commands) ---
    text: list[str] = Field(
        default_factory=list, description="Texts scored when the map sidecars carry none (repeatable).",
        json_schema_extra={"cli_multiple": True},
    )
    target: str = Field(
        "sidecar", description="Target text: sidecar (the explained text), best (highest score), or an index/name."
    )
    score: Literal["softmax", "logit", "cosine", "sigmoid"] = Field(
        "softmax", description="Score s_t of the target text: softmax over the texts, logit, cosine, sigmoid."
    )
    batch_size: int = Field(64, ge=1, description="Perturbed images per forward pass.")
    # --- insertion/deletion ---
    convention: Literal["xaiclip", "xplique", "torchcam", "rise"] = Field(
        "xaiclip", description="Counts, AUC rule and tie-break of insertion/deletion (metrics.md §2)."
    )
    baseline: str = Field(
        "black", description="Baseline: black (pixel 0 before normalisation), black-min / white-max (per-image min / "
        "max of the normalised input, Quantus black / white), mean (0 normalised), blur, noise, or value:v (constant "
        "in normalised space).",
    )
    unit: Literal["input", "grid"] = Field("input", description="Features: input pixels or the map's own cells.")
    steps: int = Field(50, ge=1, description="Steps s of the insertion/deletion curves.")
    max_fraction: float = Field(1.0, gt=0.0, le=1.0, description="Largest fraction of features perturbed.")
    rise_step: int | None = Field(None, ge=1, description="rise convention: pixels per step (default ceil(N/s)).")
    # --- MuFidelity ---
    grid_size: int | None = Field(9, ge=1, description="mufidelity: grid g×g of the Bernoulli subsets (none: pixels).")
    samples: int = Field(200, ge=2, description="mufidelity: random subsets per image.")
    subset_percent: float = Field(0.2, gt=0.0, lt=1.0, description="mufidelity: probability a cell is perturbed.")
    subset: Literal["bernoulli", "fixed"] = Field(
        "bernoulli", description="mufidelity: Bernoulli grid cells (xplique) or fixed-size C·H·W subsets (Quantus)."
    )
    subset_size: int = Field(224, ge=1, description="mufidelity --subset fixed: features perturbed per sample.")
    corr: Literal["spearman", "pearson"] = Field("spearman", description="mufidelity: correlation.")
    # --- drop ---
    ad_variant: Literal["relative", "absolute"] = Field("relative", description="drop: relative or absolute drop.")
    mask_space: Literal["normalised", "pixel"] = Field(
        "normalised", description="drop: multiply the normalised tensor or the [0,1] image by the map."
    )
    # --- localisation ---
    thresholds: str = Field("0.5", description="localization: t, t1,t2, a:b:step, otsu or tuned (on --tune-split).")
    mask_kind: Literal["cell", "nuclei"] = Field(
        "cell", description="localization: which dataset mask: cell (the dataset's mask; toy cells: the target cell) "
        "or nuclei (toy cells: nucleus + granules; not with --masks).",
    )
    tolerance: float = Field(15.0, ge=0.0, description="localization: pointing-game tolerance in mask pixels.")
    tune_split: Literal["train", "val", "test"] = Field(
        "val", description="localization --thresholds tuned: split whose maps choose t (given with --tune-maps)."
    )
    tune_maps: list[Path] = Field(
        default_factory=list, description="localization --thresholds tuned: maps of --tune-split.",
        json_schema_extra={"cli_multiple": True},
    )

    # --- sanity ---
    method: str = Field(
        "gradcam", description="sanity: CAM method whose maps are checked (see `xaiclip cam methods`), or attrib "
        "(SMDL region order as a rank map, re-attributed at every step; see --attrib-*).",
    )
    cam_score: Literal["cosine", "logit", "softmax", "sigmoid", "dot"] = Field(
        "logit", description="sanity: score the CAM explains (as `cam run --score`)."
    )
    target_layer: str | None = Field(None, description="sanity: CAM target layer (default: auto, as cam run).")
    checks: list[Literal["image", "text", "independent", "prompt"]] = Field(
        default_factory=lambda: ["image", "text", "independent", "prompt"],
        description="sanity: image (cascading image tower), text (cascading text tower), independent (one image "
        "block at a time), prompt (other text and random-token prompt).",
    )
    order: Literal["top-down", "bottom-up"] = Field("top-down", description="sanity: cascading order.")
    pairs: int = Field(50, ge=1, description="sanity: random pairs of different images for the pass band.")
    attrib_division: Literal["grid", "slico"] = Field(
        "grid", description="sanity --method attrib: regions of the SMDL search (grid cells or SLICO superpixels)."
    )
    attrib_grid: int = Field(5, ge=2, description="sanity --method attrib: --attrib-division grid: N×N cells.")
    attrib_region_size: str = Field(
        "auto", description="sanity --method attrib: --attrib-division slico: region size in pixels (auto = "
        "round(30·S/224), as attrib run)."
    )
    attrib_search: Literal["lazy", "exact", "bidirectional"] = Field(
        "lazy", description="sanity --method attrib: SMDL search (lazy greedy is the cheapest for repeated runs)."
    )

    @field_validator("splits")
    @classmethod
    def _check_splits(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if s not in ("train", "val", "test")]
        if bad or not value:
            raise ValueError(f"splits must be among train, val, test; got {value}")
        return value

    @field_validator("baseline")
    @classmethod
    def _check_baseline(cls, value: str) -> str:
        from xaiclip_cli.metrics.insertion_deletion import parse_baseline

        parse_baseline(value)  # ValueError names the choices
        return value.strip().lower()

    @field_validator("attrib_region_size")
    @classmethod
    def _check_attrib_region_size(cls, value: str) -> str:
        v = value.strip().lower()
        if v != "auto" and not (v.isdigit() and int(v) >= 1):
            raise ValueError(f"attrib_region_size must be auto or a positive integer, got {value!r}")
        return v

    @field_validator("thresholds")
    @classmethod
    def _check_thresholds(cls, value: str) -> str:
        from xaiclip_cli.metrics.localization import parse_thresholds

        parse_thresholds(value)
        return value.strip().lower()
