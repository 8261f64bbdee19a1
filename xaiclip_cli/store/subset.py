"""--limit N: the first N images of each split of a DataSource, for quick runs and end-to-end tests."""

from __future__ import annotations

import dataclasses

from xaiclip_cli.data.base import DataSource, Sample, SourceInfo


class HeadSource(DataSource):
    """The first ``limit`` images of each split of ``source`` (same order, labels and provenance)."""

    def __init__(self, source: DataSource, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.source, self.limit = source, int(limit)

    def split_sizes(self) -> dict[str, int]:
        """The source's split sizes capped at ``limit``."""
        return {s: min(n, self.limit) for s, n in self.source.split_sizes().items()}

    def get(self, split: str, index: int) -> Sample:
        """Sample ``index`` of ``split`` (IndexError past the cap)."""
        if not 0 <= index < self.split_sizes().get(split, 0):
            raise IndexError(f"{split}[{index}] is beyond --limit {self.limit}")
        return self.source.get(split, index)

    def get_many(self, split: str, indices: list[int]) -> list[Sample]:
        """Batch read through the source's own (possibly faster) get_many."""
        n = self.split_sizes().get(split, 0)
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise IndexError(f"{split}{bad[:3]} is beyond --limit {self.limit}")
        return self.source.get_many(split, indices)

    def info(self) -> SourceInfo:
        """The source's provenance, with ``extra['limit']`` recording the cap."""
        info = self.source.info()
        extra = dict(info.extra) if isinstance(info.extra, dict) else {}
        extra["limit"] = self.limit
        return dataclasses.replace(info, extra=extra)
