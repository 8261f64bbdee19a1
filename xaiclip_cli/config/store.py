"""Settings of the `store` group (store text, store image, store merge): one model, every option of the group."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from xaiclip_cli.config.base import group_config
from xaiclip_cli.config.common import ComputeSettings, ImageFileSettings, ModelSelection


class StoreSettings(ModelSelection, ImageFileSettings, ComputeSettings):
    """Where the feature library lives, what goes in it and how it is written."""

    group: ClassVar[str] = "store"
    model_config = group_config("store")
    # Encoding is deterministic (eval-mode forward, fixed row order): a seed would change nothing, so the
    # inherited `seed` field is dropped (a ClassVar removes it from the model) instead of offering a no-op --seed.
    seed: ClassVar[int] = 0

    h5: Path = Field(Path("xaiclip_features.h5"), description="Feature library file (the index file when sharded).")
    # --- inputs ---
    dataset: str = Field(
        "toycells",
        description="Images: toycells, medmnist:<flag>, folder:<dir> or csv:<file>.",
    )
    size: int | None = Field(None, ge=1, description="MedMNIST image size (28, 64, 128, 224); default 28.")
    data_root: Path | None = Field(None, description="Folder holding MedMNIST npz files (default ~/.medmnist).")
    download: bool = Field(False, description="Download a missing MedMNIST file (needs internet).")
    limit: int | None = Field(
        None, ge=1, description="Encode only the first N images of each split (quick runs; a store keeps its limit)."
    )
    prompts: str = Field("toycells", description="Prompt set: toycells, bloodmnist or a YAML file.")
    # --- layout ---
    layout: Literal["sharded", "single"] = Field(
        "sharded", description="sharded: immutable parts while writing (crash-safe), one self-contained file at the "
        "end (see --keep-parts); single: one file written in place."
    )
    part_rows: int = Field(1024, ge=1, description="Rows per part file in the sharded layout.")
    keep_parts: bool = Field(
        False, description="sharded: keep the index linked to its parts folder at the end instead of materialising "
        "one self-contained file (torchrun/SLURM ranks always keep them until store merge).",
    )
    tokens: bool = Field(True, description="Store token features (image_token_features, text_token_features).")
    cls_dtype: Literal["float32", "float16"] = Field(
        "float32", description="dtype of image_features (float16 for seed parity)."
    )
    batch_size: int = Field(32, ge=1, description="Images (or prompts) per model call.")
    workers: int = Field(
        0, ge=0, description="store image: processes that decode the images (0: a thread of this process; 1 gives "
        "decoding its own core, away from the model's).",
    )
    max_length: int | None = Field(None, ge=1, description="Text token length (default: the backend's, 77).")
    # --- behaviour ---
    overwrite: bool = Field(False, description="Delete an existing, incompatible store and start over.")
    space_check: bool = Field(True, description="Refuse to start when the disk lacks room for the unwritten rows.")
    check_source: bool = Field(False, description="Re-hash the input images of written rows against image_hash.")
    only: list[str] = Field(
        default_factory=list,
        description="Template groups to (re)write, e.g. concept_prompts_t01,label_prompts_t02 (default: all).",
    )
    clear: bool = Field(False, description="Delete every template group before writing.")
    force: bool = Field(False, description="Rewrite template groups even when their texts and model are unchanged.")
    materialize: Path | None = Field(
        None, description="store merge: also write a self-contained single-file copy to this path."
    )

    @field_validator("dataset", "prompts")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()
