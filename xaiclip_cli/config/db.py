"""Settings of the ``xaiclip db`` group: which store to read, which rows/templates, export and verify options."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from xaiclip_cli.config.base import XaiclipSettings, group_config


class DbSettings(XaiclipSettings):
    """Options of ``xaiclip db summarize|tree|sample|batch|templates|fetch|clear|verify``."""

    group: ClassVar[str] = "db"
    model_config = group_config("db")

    h5: Path = Field(Path("xaiclip_features.h5"), description="Feature store (HDF5 index file) to read.")
    index: int | None = Field(None, description="Row number of the sample to read (0 .. N-1).")
    split: Literal["all", "train", "val", "test"] = Field(
        "all", description="Split whose rows --idx selects (positions within that split)."
    )
    idx: str | None = Field(
        None,
        description="Positions within the split: '3,1,2' (kept in this order) or a slice 'start:stop[:step]' "
        "(default: the whole split).",
    )
    feature: Literal["image", "patches", "label"] = Field(
        "image", description="Column to read: image (CLS features), patches (token features) or label."
    )
    text_feature: Literal["text", "tokens"] = Field(
        "text",
        description="Template column to fetch: text (text_features) or tokens (text_token_features).",
        json_schema_extra={"cli_name": "feature"},
    )
    template: list[str] = Field(
        default_factory=list,
        description="Template group name to fetch, e.g. concept_prompts_t01 (repeatable; default: all that match).",
        json_schema_extra={"cli_multiple": True},
    )
    concept: bool = Field(False, description="Only concept template groups (names starting with 'concept').")
    label: bool = Field(False, description="Only label template groups (names starting with 'label').")
    concept_list: list[str] = Field(
        default_factory=list,
        description="Concepts to keep (exact text from concept_texts, repeatable); rows follow this order.",
        json_schema_extra={"cli_multiple": True},
    )
    max_templates: int = Field(3, ge=0, description="Template groups listed by summarize/tree before '...'.")
    max_rows: int = Field(
        256, ge=1, description="Largest number of token rows (--feature patches) one call may read into memory."
    )
    out: Path | None = Field(None, description="Write the selected arrays to this .npy or .npz file.")
    overwrite: bool = Field(False, description="Replace an existing --out file.")
    yes: bool = Field(
        False,
        description="Confirm a destructive command (clear deletes every template group).",
        json_schema_extra={"cli_aliases": ["--force"]},
    )
    require_complete: bool = Field(False, description="verify: an incomplete store (unwritten rows) is an error.")
    full: bool = Field(False, description="verify: check token features of every written row, not 256 random rows.")

    @field_validator("h5", "out")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("out")
    @classmethod
    def _check_suffix(cls, value: Path | None) -> Path | None:
        if value is not None and value.suffix.lower() not in (".npy", ".npz"):
            raise ValueError(f"--out must end in .npy or .npz, got {value.name!r}")
        return value
