"""Eval lists (smdl.md §2): ``<relative path> <target>`` lines split at the LAST space, or CSV ``path,target``.

Blank and ``#`` lines are dropped before indexing, so ``--begin/--end`` count entries, never lines (the reference's
``wc -l`` + ``--end -1`` drops the last image of a list without a final newline). Duplicates run once.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from xaiclip_cli.errors import UsageError

log = logging.getLogger("xaiclip.data")


@dataclass(frozen=True)
class ListEntry:
    """One parsed entry: its position among entries, the path as written, the target text, the line number."""

    index: int
    path: str
    target: str
    line: int


def read_eval_list(path: str | Path) -> tuple[list[ListEntry], str]:
    """All entries of a list file in order (duplicates kept) and the SHA-256 of the parsed entries."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--list {p}: no such file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--list {p}: cannot read it as UTF-8 text ({exc})") from exc
    is_csv = p.suffix.lower() == ".csv"
    entries: list[ListEntry] = []
    lines = text.splitlines()
    header_skipped = False
    for n, raw in enumerate(lines, start=1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if is_csv:
            cells = next(csv.reader([raw]))
            if len(cells) < 2 or not cells[0].strip() or not cells[1].strip():
                raise UsageError(f"--list {p}:{n}: expected 'path,target', got {raw!r}")
            if not entries and not header_skipped and cells[0].strip().lower() == "path":
                header_skipped = True
                continue
            rel, target = cells[0].strip(), cells[1].strip()
        else:
            rel, sep, target = s.rpartition(" ")
            rel, target = rel.strip(), target.strip()
            if not sep or not rel or not target:
                raise UsageError(f"--list {p}:{n}: expected '<relative path> <target>', got {s!r}")
        entries.append(ListEntry(len(entries), rel, target, n))
    if not entries:
        raise UsageError(f"--list {p}: no entries (only blank or # lines)")
    digest = hashlib.sha256("\n".join(f"{e.path}\t{e.target}" for e in entries).encode("utf-8")).hexdigest()
    return entries, digest


def select_range(entries: list[ListEntry], begin: int = 0, end: int | None = None, flag: str = "--list"
                 ) -> list[ListEntry]:
    """Entries ``[begin, end)`` (0-based; ``end`` None = to the end), duplicates (same path and target) once."""
    n = len(entries)
    if begin < 0 or (end is not None and end < 0):
        raise UsageError("--begin/--end must be >= 0 (negative entry indices are not supported)")
    if end is not None and begin > end:
        raise UsageError(f"--begin {begin} is after --end {end}")
    if begin >= n:
        raise UsageError(f"--begin {begin}: {flag} has only {n} entries (0..{n - 1})")
    if end is not None and end > n:
        raise UsageError(f"--end {end}: {flag} has only {n} entries (use --end {n} or omit it)")
    chosen = entries[begin:end]
    seen: set[tuple[str, str]] = set()
    out: list[ListEntry] = []
    for e in chosen:
        key = (e.path, e.target)
        if key in seen:
            log.warning("%s line %d: duplicate entry %s %s runs once", flag, e.line, e.path, e.target)
            continue
        seen.add(key)
        out.append(e)
    return out
