"""Result models of the store commands (printed as tables or one JSON document)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class StoreImageResult(BaseModel):
    """store image: rows written"""

    h5: str
    layout: str
    rows_total: int
    rows_written: int = Field(description="Rows encoded and committed by this run.")
    rows_skipped: int = Field(description="Rows already written before this run (resume).")
    rows_done: int = Field(description="Rows written in the store after this run.")
    complete: bool
    seconds: float
    images_per_s: float
    parts_total: int
    parts_complete: int
    rank: int = 0
    world: int = 1
    config: str | None = None
    warnings: list[str] = Field(default_factory=list)


class TextGroupRow(BaseModel):
    """One template group of store text."""

    group: str
    kind: str
    K: int
    T_txt: int
    status: str


class StoreTextResult(BaseModel):
    """store text: template groups"""

    h5: str
    written: int
    skipped: int
    removed: int
    seconds: float
    config: str | None = None
    warnings: list[str] = Field(default_factory=list)
    groups: list[TextGroupRow] = Field(default_factory=list)


class PartRow(BaseModel):
    """One part as merge saw it."""

    part: int
    rows: int
    n_written: int
    status: str


class StoreMergeResult(BaseModel):
    """store merge: index rebuilt from parts"""

    h5: str
    layout: str = "sharded"  # single: --materialize named --h5 itself, the index is now one self-contained file
    rows_total: int
    rows_done: int
    parts_total: int
    parts_complete: int
    complete: bool
    split_counts: dict[str, int]
    materialized: str | None = None
    seconds: float
    parts: list[PartRow] = Field(default_factory=list)
    message: str | None = None  # set when there was nothing to do (already a single self-contained file)
