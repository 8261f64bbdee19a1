"""Read-only access to a feature store: lazy per-process handle, cached small columns, VDS-checked row reads.

Mirrors the seed's ``database_access.py`` functions (store.md §1.1) as methods of :class:`StoreReader`.
Hand-written on top of h5py because the store's rules (written mask, VDS parts that silently read as fill,
positions within a split) are ours; h5py does the I/O.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.store import layout as L

# The seed's `tree` lists these 13 root attrs (its `_root_attr_keys`); `dataset` and the rest show as "...".
TREE_ROOT_ATTRS = L.SEED_TREE_ROOT_ATTRS
# The seed's `tree` lists these group attrs (its `_template_attr_keys`), "..." for the rest.
TREE_GROUP_ATTRS = L.GROUP_ATTRS[:5]
SPLITS = L.SPLITS
SCHEMA_ATTR = L.SCHEMA_ATTR
FEATURE_COLUMNS = {"image": L.IMAGE_FEATURES, "patches": L.IMAGE_TOKENS, "label": L.LABELS}
TEXT_COLUMNS = {"text": L.TEXT_FEATURES, "tokens": L.TEXT_TOKENS}
# What summarize shows as provenance: the §3.2 attrs plus the seed's dataset/created_at and the raw scalars.
SUMMARY_ATTRS = (*L.PROVENANCE_ATTRS, "dataset", "created_at", *L.SCALAR_ATTRS)
# Token reads above this many runs switch from per-run slices to one sorted fancy read (fewer HDF5 calls).
_MAX_SLICE_RUNS = 32


def plain(value: Any) -> Any:
    """An HDF5 attribute value as plain Python (bytes -> str, numpy scalars/arrays -> Python)."""
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()] if value.dtype.kind in "OSU" else value.tolist()
    return value


def attr_json(attrs: Any, key: str, default: Any = None) -> Any:
    """Decode a JSON-string attribute like the seed (bytes -> str -> json.loads); ``default`` if absent."""
    if key not in attrs:
        return default
    raw = plain(attrs[key])
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return default
    return raw


def runs(sorted_unique: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Split sorted unique row numbers into runs: (row_start, row_stop, pos_start, pos_stop)."""
    if sorted_unique.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_unique) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [sorted_unique.size]])
    pairs = zip(starts.tolist(), stops.tolist(), strict=True)
    return [(int(sorted_unique[s]), int(sorted_unique[e - 1]) + 1, s, e) for s, e in pairs]


def read_rows(ds: Any, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """Rows of a dataset in the caller's order: read sorted unique rows as slices (h5py needs increasing
    indices), then reorder in NumPy."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    tail = tuple(ds.shape[1:])
    if rows.size == 0:
        return np.empty((0, *tail), dtype=ds.dtype)
    uniq, inverse = np.unique(rows, return_inverse=True)
    parts = runs(uniq)
    if len(parts) == 1:
        buf = np.asarray(ds[parts[0][0]:parts[0][1]])
    elif len(parts) > _MAX_SLICE_RUNS:
        buf = np.asarray(ds[uniq])
    else:
        buf = np.empty((uniq.size, *tail), dtype=ds.dtype)
        for r0, r1, p0, p1 in parts:
            buf[p0:p1] = ds[r0:r1]
    if uniq.size == rows.size and np.array_equal(uniq, rows):
        return buf
    return buf[inverse.reshape(-1)]


def parse_idx(text: str | None) -> list[int] | slice | None:
    """Parse ``--idx``: '3,1,2' (list, order kept), 'a:b[:c]' (slice) or None (everything)."""
    if text is None or not str(text).strip():
        return None
    t = str(text).strip()
    try:
        if ":" in t:
            pieces = t.split(":")
            if len(pieces) > 3:
                raise ValueError(t)
            vals = [int(p) if p.strip() else None for p in pieces] + [None] * (3 - len(pieces))
            if vals[2] == 0:
                raise UsageError("--idx slice step must not be 0")
            return slice(*vals)
        pieces = re.split(r"\s*,\s*|\s+", t)  # '3,1,2', '3, 1, 2' or '3 1 2'
        if any(not p for p in pieces):  # '1,,2' or '1,': a lost position, not a shorter list
            raise UsageError(f"--idx {t!r} has an empty position; give positions like '3,1,2'")
        return [int(p) for p in pieces]
    except ValueError as exc:
        raise UsageError(f"--idx must be positions like '3,1,2' or a slice like '0:10:2', got {t!r}") from exc


@dataclass
class Sample:
    """One row of the store (what the seed's ``access_sample_by_index`` returns)."""

    index: int
    id: int
    label: int
    split: str
    image_feature: np.ndarray
    image_token_feature: np.ndarray | None


@dataclass
class _Source:
    """A VDS source file mapped to rows [start, stop) of the index."""

    start: int
    stop: int
    path: Path


@dataclass
class _Handle:
    """Per-open-file state: the h5py file, dataset objects and cached small columns."""

    file: Any
    pid: int
    datasets: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    sources: dict[str, list[_Source]] = field(default_factory=dict)
    good_sources: set[Path] = field(default_factory=set)
    relinked: Path | None = None  # the parts folder a renamed index was relinked to in memory


def open_h5(path: Path, mode: str = "r") -> Any:
    """Open an HDF5 file with one-line errors: missing (exit 2), not HDF5/truncated (exit 1), locked (exit 1)."""
    import h5py

    if not path.exists():
        raise UsageError(f"store not found: {path} (pass --h5 PATH, or create it with 'xaiclip store image')")
    if path.is_dir():
        raise UsageError(f"--h5 {path} is a directory; pass the store's .h5 index file")
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        msg = str(exc)
        low = msg.lower()
        if "truncated" in low:
            raise XaiclipError(f"store {path} is truncated (a writer was killed?); rebuild or resume it") from exc
        if isinstance(exc, BlockingIOError) or "unable to lock file" in low or "already open for write" in low:
            raise XaiclipError(
                f"store {path} is open for writing by another process (file locked); retry when the writer finishes"
            ) from exc
        if not h5py.is_hdf5(path):
            raise XaiclipError(f"{path} is not an HDF5 file (corrupt or wrong file)") from exc
        raise XaiclipError(f"cannot open store {path}: {msg.splitlines()[0] if msg else type(exc).__name__}") from exc


class StoreReader:
    """Lazy, read-only, per-process reader of an xaiclip (or seed) feature store."""

    def __init__(self, path: str | Path, check_sources: bool = True) -> None:
        self.path = Path(path)
        self.check_sources = check_sources
        self._h: _Handle | None = None

    # -- handle -------------------------------------------------------------------------------------------------
    @property
    def handle(self) -> _Handle:
        """The open handle of this process; opened on first use and again after a fork (never inherited)."""
        pid = os.getpid()
        h = self._h
        if h is None or h.pid != pid:
            # A handle inherited across fork is dropped, not used: HDF5 state is not fork-safe.
            self._h = h = _Handle(file=open_h5(self.path, "r"), pid=pid)
            self._check_is_store(h.file)
            from xaiclip_cli.store.relink import open_relinked, stale_parts_dir

            pdir = stale_parts_dir(self.path, h.file)
            if pdir is not None:
                # Renamed with its parts folder: read through an in-memory relinked copy (the file is untouched;
                # `store merge` relinks it on disk for plain h5py readers).
                h.file.close()
                h.file = open_relinked(self.path)
                h.relinked = pdir
        return h

    @property
    def file(self) -> Any:
        """The h5py File of this process."""
        return self.handle.file

    def close(self) -> None:
        """Close the handle (only when it belongs to this process)."""
        h, self._h = self._h, None
        if h is not None and h.pid == os.getpid():
            h.file.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.close()
        # A raw HDF5 read error inside the block (a writer changed the file under us, or it is damaged) becomes one
        # named line; our own errors pass through unchanged.
        if isinstance(exc, OSError) and not isinstance(exc, XaiclipError):
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise XaiclipError(
                f"cannot read store {self.path} ({first}); if a writer is running, retry when it finishes"
            ) from exc

    def _check_is_store(self, f: Any) -> None:
        schema = plain(f.attrs.get(SCHEMA_ATTR, ""))
        if schema and not str(schema).startswith(L.SCHEMA_VERSION.split("/")[0] + "/"):
            raise UsageError(f"{self.path} is not an xaiclip store ({SCHEMA_ATTR} {schema!r})")
        if schema and str(schema) != L.SCHEMA_VERSION:
            raise UsageError(f"{self.path} has store schema {schema!r}; this xaiclip reads {L.SCHEMA_VERSION!r}")
        if not schema and L.IMAGE_FEATURES not in f and L.TEMPLATES not in f:
            raise UsageError(f"{self.path} is not a feature store (no image_features, templates or {SCHEMA_ATTR})")

    def dataset(self, name: str) -> Any:
        """A dataset object of the open file (cached: h5py name lookups are slow)."""
        h = self.handle
        ds = h.datasets.get(name)
        if ds is None:
            if name not in h.file:
                raise XaiclipError(self._missing_message(name))
            ds = h.datasets[name] = h.file[name]
        return ds

    def _missing_message(self, name: str) -> str:
        if name == L.IMAGE_TOKENS:
            return f"store {self.path} has no image_token_features (written with --no-tokens); use --feature image"
        return f"store {self.path} has no dataset {name!r}"

    def has(self, name: str) -> bool:
        """Whether the store holds ``name``."""
        return name in self.handle.file

    # -- small columns ------------------------------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        """Number of planned rows N."""
        if self.has(L.IMAGE_FEATURES):
            return int(self.dataset(L.IMAGE_FEATURES).shape[0])
        return int(self.dataset(L.IDS).shape[0]) if self.has(L.IDS) else 0

    def column(self, name: str) -> np.ndarray:
        """A small per-row column read whole once per handle (split decoded to str)."""
        h = self.handle
        col = h.columns.get(name)
        if col is None:
            if name == L.WRITTEN and not self.has(L.WRITTEN):
                # Seed stores have no mask: rows with a real id are written (store.md §1.2 rule 5 placeholders).
                col = self.column(L.IDS) >= 0
            elif name == L.SPLIT:
                raw = self.dataset(L.SPLIT)[()]
                col = np.array([plain(v) for v in raw.tolist()], dtype=object)
            else:
                col = np.asarray(self.dataset(name)[()])
            h.columns[name] = col
        return col

    def written(self) -> np.ndarray:
        """Bool mask of written rows."""
        return self.column(L.WRITTEN)

    def split_rows(self, split: str) -> np.ndarray:
        """Row numbers of the written rows of ``split`` ('all' = every written row), in row order."""
        s = split.lower()
        if s not in ("all", *SPLITS):
            raise UsageError(f"--split must be one of all, train, val, test; got {split!r}")
        mask = self.written().astype(bool)
        if s != "all":
            mask = mask & (self.column(L.SPLIT) == s)
        return np.flatnonzero(mask).astype(np.int64)

    # -- VDS sources --------------------------------------------------------------------------------------------
    def sources(self, name: str) -> list[_Source]:
        """VDS sources of a feature dataset (empty for a real dataset), with absolute paths."""
        h = self.handle
        if name not in h.sources:
            ds = self.dataset(name)
            out: list[_Source] = []
            if ds.is_virtual:
                for m in ds.virtual_sources():
                    lo, hi = m.vspace.get_select_bounds()
                    p = Path(m.file_name)
                    if m.file_name == ".":
                        continue  # a source inside the index itself
                    if not p.is_absolute():
                        # HDF5 resolves relative sources beside the virtual file (store.md §3.1, measured).
                        p = self.path.resolve().parent / p
                    out.append(_Source(int(lo[0]), int(hi[0]) + 1, p))
                out.sort(key=lambda s: s.start)
            h.sources[name] = out
        return h.sources[name]

    def check_rows(self, name: str, rows: np.ndarray) -> None:
        """Fail, naming the part file, when a VDS source holding any of ``rows`` is missing or unreadable.

        Needed because HDF5 silently returns the fill value for a missing source.
        """
        if not self.check_sources:
            return
        srcs = self.sources(name)
        if not srcs or rows.size == 0:
            return
        h = self.handle
        starts = np.array([s.start for s in srcs])
        pos = np.unique(np.searchsorted(starts, rows, side="right") - 1)
        for k in pos.tolist():
            if k < 0:
                continue
            src = srcs[k]
            if src.path in h.good_sources:
                continue
            if not src.path.exists():
                raise XaiclipError(
                    f"part file {src.path} (rows {src.start}-{src.stop - 1}) is missing; the index maps it "
                    "but it is gone: rerun 'xaiclip store image' to rewrite it or 'xaiclip db verify'"
                )
            try:
                f = open_h5(src.path, "r")
                f.close()
            except XaiclipError as exc:
                raise XaiclipError(f"part file {src.path} (rows {src.start}-{src.stop - 1}) cannot be read: {exc}") \
                    from exc
            h.good_sources.add(src.path)

    # -- rows ---------------------------------------------------------------------------------------------------
    def _row_index(self, index: int) -> int:
        n = self.n_rows
        if not -n <= int(index) < n:
            raise UsageError(f"index {index} out of range: the store has {n} rows (0..{n - 1})")
        return int(index) % n

    def _require_written(self, rows: np.ndarray) -> None:
        w = self.written()
        bad = rows[~w[rows].astype(bool)]
        if bad.size:
            total = int(np.count_nonzero(w))
            raise XaiclipError(
                f"row {int(bad[0])} is not written yet (store {self.path} has {total}/{w.size} rows written); "
                "resume it with 'xaiclip store image'"
            )

    def read(self, name: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows of a per-row dataset, in the given order, after checking the VDS sources hold them."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self.check_rows(name, rows)
        return self._not_fill(name, rows, read_rows(self.dataset(name), rows))

    def _not_fill(self, name: str, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Refuse rows marked written that read as the NaN fill (a source vanished or a writer is mid-way):
        never hand out placeholders as features."""
        if values.dtype.kind != "f" or values.size == 0:
            return values
        flat = values.reshape(len(rows), -1)
        suspect = np.flatnonzero(np.isnan(flat[:, 0]))
        for k in suspect.tolist():
            if np.isnan(flat[k]).all():
                raise XaiclipError(
                    f"row {int(rows[k])} of {name} reads as fill (NaN) although marked written: a part file is "
                    f"missing or a writer is still writing {self.path}; run 'xaiclip db verify'"
                )
        return values

    def sample(self, index: int, tokens: bool = True) -> Sample:
        """One row: CLS, tokens (None when the store has none), id, label, split (seed ``access_sample_by_index``)."""
        i = self._row_index(index)
        rows = np.array([i])
        self._require_written(rows)
        self.check_rows(L.IMAGE_FEATURES, rows)
        cls = self._not_fill(L.IMAGE_FEATURES, rows, self.dataset(L.IMAGE_FEATURES)[i][None])[0]
        tok = None
        if tokens and self.has(L.IMAGE_TOKENS):
            self.check_rows(L.IMAGE_TOKENS, rows)
            tok = self._not_fill(L.IMAGE_TOKENS, rows, self.dataset(L.IMAGE_TOKENS)[i][None])[0]
        return Sample(
            index=i,
            id=int(self.column(L.IDS)[i]),
            label=int(self.column(L.LABELS)[i]),
            split=str(self.column(L.SPLIT)[i]),
            image_feature=cls,
            image_token_feature=tok,
        )

    def select(self, split: str = "all", idx: Sequence[int] | slice | range | np.ndarray | None = None) -> np.ndarray:
        """Row numbers for positions ``idx`` within ``split`` (written rows only), in the caller's order."""
        rows = self.split_rows(split)
        if idx is None:
            return rows
        if isinstance(idx, slice):
            return rows[idx]
        pos = np.asarray(list(idx) if isinstance(idx, range) else idx, dtype=np.int64).reshape(-1)
        if pos.size and (pos.min() < 0 or pos.max() >= rows.size):
            bad = int(pos[(pos < 0) | (pos >= rows.size)][0])
            raise UsageError(
                f"--idx position {bad} out of range for split '{split}' ({rows.size} written rows: 0..{rows.size - 1})"
            )
        return rows[pos]

    def batch(
        self,
        split: str = "all",
        idx: Sequence[int] | slice | range | np.ndarray | None = None,
        feature: str = "image",
        max_rows: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, values) of one column for positions within a split, in the caller's order (seed ``access_batch``).

        ``max_rows`` caps token reads so a whole-column token read cannot happen by accident.
        """
        name = FEATURE_COLUMNS.get(feature.lower())
        if name is None:
            raise UsageError(f"--feature must be one of image, patches, label; got {feature!r}")
        rows = self.select(split, idx)
        if name == L.IMAGE_TOKENS:
            if not self.has(name):
                raise UsageError(self._missing_message(name))
            if max_rows is not None and rows.size > max_rows:
                ds = self.dataset(name)
                gb = rows.size * int(np.prod(ds.shape[1:])) * ds.dtype.itemsize / 1e9
                raise UsageError(
                    f"selection has {rows.size} token rows ({gb:.2f} GB), more than --max-rows {max_rows}; "
                    "narrow --idx or raise --max-rows"
                )
        if name == L.LABELS:
            return rows, self.column(L.LABELS)[rows]
        return rows, self.read(name, rows)

    # -- templates ----------------------------------------------------------------------------------------------
    def template_names(self, kind: str | None = None) -> list[str]:
        """Sorted template group names, optionally only those starting with ``concept`` or ``label``."""
        f = self.file
        if L.TEMPLATES not in f:
            return []
        names = sorted(f[L.TEMPLATES].keys())
        if kind:
            if kind not in ("concept", "label"):
                raise UsageError(f"template kind must be concept or label, got {kind!r}")
            names = [n for n in names if n.startswith(kind)]
        return names

    def template_info(self, name: str) -> dict[str, Any]:
        """Facts about one template group: K, D, T_txt, kind, texts_hash, has tokens, first text."""
        g = self.file[L.TEMPLATES][name]
        feats = g.get(L.TEXT_FEATURES)
        texts = [plain(t) for t in g[L.TEXTS][()].tolist()] if L.TEXTS in g else []
        return {
            "name": name,
            "kind": "concept" if name.startswith("concept") else "label" if name.startswith("label") else "other",
            "K": int(feats.shape[0]) if feats is not None else int(plain(g.attrs.get("K", -1))),
            "D": int(feats.shape[1]) if feats is not None else int(plain(g.attrs.get("D", -1))),
            "T_txt": int(plain(g.attrs.get("T_txt", -1))),
            "has_tokens": L.TEXT_TOKENS in g,
            "texts_hash": str(plain(g.attrs.get("texts_hash", ""))),
            "template": str(plain(g.attrs.get("template", ""))),
            "first_text": texts[0] if texts else "",
        }

    def texts(self, name: str) -> list[str]:
        """The prompt texts of a template group."""
        g = self.file[L.TEMPLATES][name]
        return [plain(t) for t in g[L.TEXTS][()].tolist()] if L.TEXTS in g else []

    def concept_positions(self, concepts: Sequence[str]) -> np.ndarray:
        """Positions of ``concepts`` in the root ``concept_texts`` list (exact match); unknown -> exit 2."""
        base = attr_json(self.file.attrs, "concept_texts")
        if base is None and L.META in self.file and "concept_texts" in self.file[L.META]:
            base = json.loads(plain(self.file[L.META]["concept_texts"][()]))
        if not base:
            raise XaiclipError(f"store {self.path} has no concept_texts; cannot filter by --concept-list")
        positions = {str(c): i for i, c in enumerate(base)}
        missing = [c for c in concepts if str(c) not in positions]
        if missing:
            raise UsageError(f"unknown concept {missing[0]!r}: not in the store's concept_texts (exact text needed)")
        return np.array([positions[str(c)] for c in concepts], dtype=np.int64)

    def fetch(
        self,
        template_ids: Sequence[str] | None = None,
        kind: str | None = None,
        concept_list: Sequence[str] | None = None,
        feature: str = "text",
    ) -> dict[str, np.ndarray]:
        """Template features by group name (seed ``fetch_template_features``; always a dict here).

        ``concept_list`` keeps those rows (positions in ``concept_texts``) of each concept group, in list order.
        """
        key = TEXT_COLUMNS.get(feature.lower())
        if key is None:
            raise UsageError(f"--feature must be text or tokens for fetch; got {feature!r}")
        if L.TEMPLATES not in self.file:
            raise XaiclipError(f"store {self.path} has no templates group")
        names = self.template_names(kind)
        if template_ids:
            known = set(self.template_names())
            unknown = [t for t in template_ids if t not in known]
            if unknown:
                raise UsageError(f"unknown template {unknown[0]!r}; 'xaiclip db templates' lists the groups")
            wanted = set(template_ids)
            names = [n for n in names if n in wanted]
            if not names:
                raise UsageError(f"templates {list(template_ids)} do not match the {kind} filter")
        if not names:
            raise UsageError("no template groups match" + (f" kind {kind!r}" if kind else "") + f" in {self.path}")
        pos = None
        if concept_list:
            if any(not n.startswith("concept") for n in names):
                if kind != "concept" and not template_ids:
                    names = [n for n in names if n.startswith("concept")]
                else:
                    raise UsageError("--concept-list applies to concept templates only")
            pos = self.concept_positions(concept_list)
        out: dict[str, np.ndarray] = {}
        for n in names:
            g = self.file[L.TEMPLATES][n]
            if key not in g:
                continue
            arr = np.asarray(g[key][()]) if pos is None else read_rows(g[key], pos)
            out[n] = arr
        if not out:
            raise UsageError(f"no matching template group holds {key} (stored without text tokens?)")
        return out

    # -- overview -----------------------------------------------------------------------------------------------
    def provenance(self) -> dict[str, Any]:
        """Provenance root attributes that are present (store.md §3.2), JSON strings decoded."""
        attrs = self.file.attrs
        out: dict[str, Any] = {}
        for k in SUMMARY_ATTRS:
            if k in attrs:
                v = plain(attrs[k])
                if k in ("dataset", "lib_versions"):
                    v = attr_json(attrs, k, v)
                out[k] = v
        return out

    def completeness(self) -> dict[str, Any]:
        """Rows planned/written, per-split written counts, and for sharded stores the part files missing."""
        w = self.written().astype(bool)
        split = self.column(L.SPLIT) if self.has(L.SPLIT) else np.array([], dtype=object)
        per_split = {s: int(np.count_nonzero(w & (split == s))) for s in SPLITS} if split.size else {}
        missing: list[str] = []
        if self.has(L.IMAGE_FEATURES):
            for s in self.sources(L.IMAGE_FEATURES):
                if not s.path.exists() and bool(w[s.start:s.stop].any()):
                    missing.append(str(s.path))
        n_written = int(np.count_nonzero(w))
        return {
            "n_rows": int(w.size),
            "n_written": n_written,
            "complete": n_written == w.size,
            "written_per_split": per_split,
            "missing_parts": missing,
        }

    def summarize(self, max_templates: int = 3) -> dict[str, Any]:
        """Seed ``summarize_h5`` facts plus provenance and completeness."""
        f = self.file
        names = sorted(f[L.TEMPLATES].keys()) if L.TEMPLATES in f else []
        shape = list(f[L.IMAGE_FEATURES].shape) if L.IMAGE_FEATURES in f else None
        return {
            "path": str(self.path),
            "image_features": shape,
            "image_token_features": list(f[L.IMAGE_TOKENS].shape) if L.IMAGE_TOKENS in f else None,
            "ids_preview": [int(v) for v in self.column(L.IDS)[:5]] if L.IDS in f else [],
            "split_counts": attr_json(f.attrs, "split_counts", {}) or {},
            "n_templates": len(names),
            "templates": names[:max_templates] + (["..."] if len(names) > max_templates else []),
            "provenance": self.provenance(),
            "completeness": self.completeness(),
        }

    def tree(self, max_templates: int = 3) -> dict[str, Any]:
        """Datasets (shape, dtype, virtual), the seed root attrs present ('...' for others) and template groups."""
        f = self.file
        datasets = []
        seed_order = (L.IMAGE_FEATURES, L.IMAGE_TOKENS, L.IDS, L.LABELS, L.SPLIT)
        for name in [n for n in seed_order if n in f] + sorted(n for n in f if n not in seed_order):
            obj = f[name]
            if hasattr(obj, "shape") and hasattr(obj, "dtype"):
                datasets.append({"path": name, "shape": list(obj.shape), "dtype": _dtype_text(obj),
                                 "virtual": bool(obj.is_virtual)})
        present = [k for k in TREE_ROOT_ATTRS if k in f.attrs]
        others = sorted(k for k in f.attrs if k not in present)
        names = sorted(f[L.TEMPLATES].keys()) if L.TEMPLATES in f else []
        groups = []
        for n in names[:max_templates]:
            g = f[L.TEMPLATES][n]
            ds = [{"path": f"templates/{n}/{k}", "shape": list(g[k].shape), "dtype": _dtype_text(g[k])}
                  for k in g if hasattr(g[k], "shape")]
            tattrs = [k for k in TREE_GROUP_ATTRS if k in g.attrs]
            tattrs += ["..."] if any(k not in TREE_GROUP_ATTRS for k in g.attrs) else []
            groups.append({"name": n, "datasets": ds, "attrs": tattrs})
        return {
            "path": str(self.path),
            "datasets": datasets,
            "attrs": present + (["..."] if others else []),
            "other_attrs": others,
            "groups": [k for k in f if not hasattr(f[k], "shape")],
            "templates": groups,
            "n_templates": len(names),
        }


def _dtype_text(ds: Any) -> str:
    import h5py

    info = h5py.check_string_dtype(ds.dtype)
    if info is not None:
        return "vlen str" if info.length is None else f"str[{info.length}]"
    return str(ds.dtype)


def clear_templates(path: str | Path, yes: bool) -> list[str]:
    """Delete every template group, keeping an empty ``templates/`` (seed ``clear_all_templates``); needs ``yes``."""
    p = Path(path)
    f = open_h5(p, "r")
    try:
        names = sorted(f[L.TEMPLATES].keys()) if L.TEMPLATES in f else []
        StoreReader(p)._check_is_store(f)
    finally:
        f.close()
    if not yes:
        raise UsageError(f"clear deletes {len(names)} template groups from {p}; rerun with --yes (or --force)")
    f = open_h5(p, "r+")
    try:
        if L.TEMPLATES in f:
            del f[L.TEMPLATES]
        f.create_group(L.TEMPLATES)  # seed readers expect the group to exist (store.md §1.2 rule 1)
        f.flush()
    finally:
        f.close()
    return names
