"""`db verify`: check a store against the layout contract (store.md §8 checks 1-7) and report issues.

Hand-written because the checks are our contract (written mask, placeholders, parts, hashes); h5py reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.store import layout as L
from xaiclip_cli.store.reader import StoreReader, attr_json, open_h5, plain, read_rows
from xaiclip_cli.store.relink import linked_folder

REQUIRED_DATASETS = (L.IMAGE_FEATURES, L.IDS, L.LABELS, L.SPLIT)
# Root attrs the seed writes in its text stage (scalars from the model's text side, prompt lists).
TEXT_STAGE_ATTRS = (*L.SCALAR_ATTRS, *L.PROMPT_LIST_ATTRS)
XAICLIP_DATASETS = (L.WRITTEN, L.SOURCE_SPLIT, L.SOURCE_INDEX, L.IMAGE_HASH)
CLS_NORM_TOL = {"float32": 1e-4, "float16": 2e-3}
TOKEN_SAMPLE_ROWS = 256
_BLOCK_ROWS = 4096  # CLS rows per read: bounded memory for any N
_MAX_LISTED = 5  # rows named in one message


@dataclass
class Issue:
    """One finding: which §8 check, error or warning, one line."""

    check: int
    level: str
    message: str


@dataclass
class VerifyReport:
    """All findings plus what was checked."""

    issues: list[Issue] = field(default_factory=list)
    checked: dict[str, Any] = field(default_factory=dict)
    complete: bool = False

    @property
    def errors(self) -> list[Issue]:
        """Issues that fail verification."""
        return [i for i in self.issues if i.level == "error"]

    @property
    def warnings(self) -> list[Issue]:
        """Issues that do not fail verification."""
        return [i for i in self.issues if i.level == "warning"]

    @property
    def ok(self) -> bool:
        """True when no check found an error."""
        return not self.errors

    def error(self, check: int, message: str) -> None:
        """Record an error."""
        self.issues.append(Issue(check, "error", message))

    def warn(self, check: int, message: str) -> None:
        """Record a warning."""
        self.issues.append(Issue(check, "warning", message))

    def note(self, check: int, message: str) -> None:
        """Record a fact worth knowing that is neither an error nor a warning (how the store is stored, ...)."""
        self.issues.append(Issue(check, "note", message))


def _rows_text(rows: np.ndarray | list[int]) -> str:
    rows = np.asarray(rows)
    shown = ", ".join(str(int(r)) for r in rows[:_MAX_LISTED])
    return shown + (", ..." if rows.size > _MAX_LISTED else "")


def verify_store(path: str | Path, require_complete: bool = False, full: bool = False, seed: int = 0) -> VerifyReport:
    """Run checks 1-7 of store.md §8 on ``path``; a missing path is a usage error (exit 2)."""
    p = Path(path)
    rep = VerifyReport()
    if not p.exists():
        raise UsageError(f"store not found: {p} (pass --h5 PATH)")
    try:
        reader = StoreReader(p, check_sources=False)
        f = reader.file
    except XaiclipError as exc:
        rep.error(1, str(exc))
        return rep
    try:
        _check_structure(reader, f, rep)
        if rep.errors:
            return rep  # later checks would only repeat the structural errors
        n = reader.n_rows
        written = reader.written().astype(bool)
        rep.complete = bool(written.all())
        rep.checked.update(n_rows=n, n_written=int(written.sum()))
        if not rep.complete:
            msg = f"store is incomplete: {int(written.sum())}/{n} rows written (resume with 'xaiclip store image')"
            rep.error(3, msg) if require_complete else rep.warn(3, msg)
        _check_counts(reader, f, written, rep)
        _check_rows(reader, f, written, rep)
        usable = _check_parts(reader, f, written, rep)
        _check_features(reader, f, written & usable, rep, full=full, seed=seed)
        _check_templates(reader, f, rep)
    finally:
        reader.close()
    return rep


def _check_structure(r: StoreReader, f: Any, rep: VerifyReport) -> None:
    """Checks 1-2: datasets/attrs present, JSON parses, attrs fit, lengths and dims agree."""
    is_xaiclip = L.SCHEMA_ATTR in f.attrs
    rep.checked["schema"] = plain(f.attrs.get(L.SCHEMA_ATTR, "seed"))
    for name in REQUIRED_DATASETS + (XAICLIP_DATASETS if is_xaiclip else ()):
        if name not in f:
            rep.error(1, f"missing dataset {name!r}")
    if L.TEMPLATES not in f:
        rep.error(1, "missing group 'templates' (seed readers need it, even empty)")
    no_text = [a for a in L.SEED_ROOT_ATTRS if a in TEXT_STAGE_ATTRS and a not in f.attrs and not _in_meta(f, a)]
    if no_text and len(f[L.TEMPLATES].keys() if L.TEMPLATES in f else []) == 0:
        # The seed writes these with its text stage: without templates this is a valid image-only store.
        rep.note(1, f"image-only store: no text stage yet (no templates, no {', '.join(no_text)}); "
                    "add prompts with 'xaiclip store text'")
    else:
        no_text = []
    for a in L.SEED_ROOT_ATTRS:
        if a not in f.attrs and a not in no_text and not (a in L.PROMPT_LIST_ATTRS and _in_meta(f, a)):
            rep.error(1, f"missing root attribute {a!r}")
    for a in L.JSON_ROOT_ATTRS:
        if a in f.attrs:
            raw = plain(f.attrs[a])
            try:
                json.loads(raw) if isinstance(raw, str) else None
            except json.JSONDecodeError:
                rep.error(1, f"root attribute {a!r} is not valid JSON")
    for a in L.PROMPT_LIST_ATTRS:
        if a not in f.attrs and _in_meta(f, a):
            rep.warn(1, f"{a} is only in meta/ (too big for an attribute): seed concept/label filtering is unavailable")
    for a in f.attrs:
        v = plain(f.attrs[a])
        size = len(v.encode("utf-8")) if isinstance(v, str) else np.asarray(f.attrs[a]).nbytes
        if size >= L.ATTR_LIMIT_BYTES:
            rep.error(1, f"root attribute {a!r} is {size} bytes (HDF5 object headers hold < 64 KB)")
    if rep.errors:
        return
    n = f[L.IMAGE_FEATURES].shape[0]
    for name in (*REQUIRED_DATASETS, *XAICLIP_DATASETS, L.IMAGE_TOKENS):
        if name in f and f[name].shape[0] != n:
            rep.error(2, f"dataset {name!r} has {f[name].shape[0]} rows, image_features has {n}")
    d = f[L.IMAGE_FEATURES].shape[1]
    if int(plain(f.attrs["D"])) != d:
        rep.error(2, f"attribute D={plain(f.attrs['D'])} but image_features has D={d}")
    if L.IMAGE_TOKENS in f:
        tok = f[L.IMAGE_TOKENS]
        if int(plain(f.attrs["T_img"])) != tok.shape[1] or tok.shape[2] != d:
            t_img = plain(f.attrs["T_img"])
            rep.error(2, f"image_token_features shape {tok.shape} disagrees with T_img={t_img}, D={d}")
    n_concepts = len(_prompt_list(f, "concept_texts") or [])
    n_labels = len(_prompt_list(f, "label_texts") or [])
    for name in sorted(f[L.TEMPLATES].keys()) if L.TEMPLATES in f else []:
        g = f[L.TEMPLATES][name]
        parsed = L.parse_template_group_name(name)
        if parsed is None:
            rep.error(2, f"templates/{name} is not named concept_prompts_tNN or label_prompts_tNN")
        if L.TEXT_FEATURES not in g or L.TEXTS not in g:
            rep.error(2, f"templates/{name} lacks text_features or texts")
            continue
        k, gd = g[L.TEXT_FEATURES].shape
        t_txt = int(plain(g.attrs.get("T_txt", -1)))
        if int(plain(g.attrs.get("K", -1))) != k or int(plain(g.attrs.get("D", -1))) != gd:
            rep.error(2, f"templates/{name}: attrs K/D {plain(g.attrs.get('K'))}/{plain(g.attrs.get('D'))} "
                         f"!= text_features shape {(k, gd)}")
        if gd != d:
            rep.error(2, f"templates/{name}: D={gd} but image features have D={d}")
        if g[L.TEXTS].shape[0] != k:
            rep.error(2, f"templates/{name}: {g[L.TEXTS].shape[0]} texts but K={k}")
        if L.TEXT_TOKENS in g:
            shp = g[L.TEXT_TOKENS].shape
            if shp[0] != k or shp[1] != t_txt or shp[2] != gd:
                rep.error(2, f"templates/{name}: text_token_features {shp} != (K, T_txt, D) = {(k, t_txt, gd)}")
        elif t_txt != -1:
            rep.error(2, f"templates/{name}: T_txt={t_txt} but no text_token_features (expected -1)")
        if parsed is not None:
            expect = n_concepts if parsed[0] == "concept" else n_labels
            if expect and k != expect:
                rep.error(2, f"templates/{name}: K={k} but {parsed[0]} list has {expect} items")


def _in_meta(f: Any, name: str) -> bool:
    return L.META in f and name in f[L.META]


def _prompt_list(f: Any, name: str) -> list[Any] | None:
    v = attr_json(f.attrs, name)
    if v is None and _in_meta(f, name):
        v = json.loads(plain(f[L.META][name][()]))
    return v


def _check_counts(r: StoreReader, f: Any, written: np.ndarray, rep: VerifyReport) -> None:
    """Check 3: n_written attr and split_counts agree with the written mask."""
    if "n_written" in f.attrs and int(plain(f.attrs["n_written"])) != int(written.sum()):
        rep.error(3, f"attribute n_written={plain(f.attrs['n_written'])} but {int(written.sum())} rows are written")
    split = r.column(L.SPLIT)
    actual = {s: int(np.count_nonzero(written & (split == s))) for s in L.SPLITS}
    counts = attr_json(f.attrs, "split_counts", {}) or {}
    missing = [s for s in L.SPLITS if s not in counts]
    if missing:
        rep.error(3, f"split_counts lacks keys {missing}")
    elif {s: int(counts[s]) for s in L.SPLITS} != actual:
        rep.error(3, f"split_counts {counts} != written rows per split {actual}")
    rep.checked["written_per_split"] = actual


def _check_rows(r: StoreReader, f: Any, written: np.ndarray, rep: VerifyReport) -> None:
    """Check 4: ids, split vs source_split, unique source_index per split, label range, unwritten placeholders."""
    n = written.size
    ids = r.column(L.IDS)
    labels = r.column(L.LABELS)
    split = r.column(L.SPLIT)
    rows = np.arange(n)
    bad = rows[written & (ids != rows)]
    if bad.size:
        rep.error(4, f"{bad.size} written rows have ids != row number (rows {_rows_text(bad)})")
    n_labels = len(_prompt_list(f, "label_texts") or [])
    hi = n_labels if n_labels else np.iinfo(np.int64).max
    bad = rows[written & ((labels < -1) | (labels >= hi))]
    if bad.size:
        rep.error(4, f"{bad.size} written rows have labels outside -1..{hi - 1} (rows {_rows_text(bad)})")
    bad = rows[written & ~np.isin(split, L.SPLITS)]
    if bad.size:
        rep.error(4, f"{bad.size} written rows have a split outside train/val/test (rows {_rows_text(bad)})")
    un = ~written
    bad = rows[un & ((ids != -1) | (labels != -1) | (split != ""))]
    if bad.size:
        rep.error(4, f"{bad.size} unwritten rows lack the placeholders ids=-1, labels=-1, split='' "
                     f"(rows {_rows_text(bad)})")
    if L.SOURCE_SPLIT in f:
        ss = r.column(L.SOURCE_SPLIT)
        si = r.column(L.SOURCE_INDEX)
        names = np.array([L.CODE_SPLITS.get(int(c), "") for c in range(256)], dtype=object)[ss.astype(np.int64)]
        bad = rows[written & (names != split)]
        if bad.size:
            rep.error(4, f"{bad.size} written rows have split != source_split (rows {_rows_text(bad)})")
        for s in L.SPLITS:
            idx = si[written & (split == s)]
            if idx.size != np.unique(idx).size:
                rep.error(4, f"source_index repeats within split {s!r}")
        bad = rows[un & ((ss != L.UNWRITTEN_SPLIT_CODE) | (si != -1))]
        if bad.size:
            rep.error(4, f"{bad.size} unwritten rows lack source_split=255/source_index=-1 (rows {_rows_text(bad)})")


def _check_parts(r: StoreReader, f: Any, written: np.ndarray, rep: VerifyReport) -> np.ndarray:
    """Check 6: every VDS source holding written rows opens, fingerprints match; return rows whose data is readable."""
    usable = np.ones(written.size, dtype=bool)
    if L.IMAGE_FEATURES not in f or not f[L.IMAGE_FEATURES].is_virtual:
        rep.checked["layout"] = "single"
        rep.checked["storage"] = "self-contained"
        rep.note(6, "self-contained: one file holds every feature (copying the .h5 alone is enough)")
        return usable
    rep.checked["layout"] = "sharded"
    rep.checked["storage"] = "linked"
    pdir = r.handle.relinked
    if pdir is not None:
        rep.error(6, f"the store was renamed: its index still links the old parts folder name, so plain h5py and "
                     f"seed readers read NaN; its parts are in {pdir.name}/ (xaiclip reads them): run 'xaiclip "
                     f"store merge --h5 {r.path}' to relink them")
    else:
        folder = linked_folder(f)
        if folder and folder != L.parts_dir(r.path).name:
            rep.warn(6, f"the index is named {r.path.name} but its parts folder is {folder}/: readers work, "
                        f"'xaiclip store image/merge' look for {L.parts_dir(r.path).name}/; rename the folder")
    rep.note(6, f"linked: features live in the part files under {pdir.name if pdir else linked_folder(f)}/; "
                "copy or move the .h5 together with that folder, or make one file with 'xaiclip store merge "
                f"--h5 {r.path} --materialize {r.path}'")
    fp = plain(f.attrs.get("fingerprint", ""))
    srcs: dict[Path, tuple[int, int]] = {}
    for name in (L.IMAGE_FEATURES, L.IMAGE_TOKENS):
        if name in f:
            for s in r.sources(name):
                srcs.setdefault(s.path, (s.start, s.stop))
    n_ok = 0
    for path, (a, b) in sorted(srcs.items(), key=lambda kv: kv[1]):
        holds = bool(written[a:b].any())
        if not path.exists():
            usable[a:b] = False
            if holds:
                rep.error(6, f"part file {path} (rows {a}-{b - 1}) holds written rows but is missing")
            elif rep.complete:
                rep.error(6, f"part file {path} is missing")
            continue
        try:
            pf = open_h5(path, "r")
        except XaiclipError as exc:
            usable[a:b] = False
            (rep.error if holds else rep.warn)(6, f"part file {path} cannot be opened: {exc}")
            continue
        with pf:
            pfp = plain(pf.attrs.get("fingerprint", ""))
            if fp and pfp != fp:
                rep.error(6, f"part file {path}: fingerprint differs from the index (written by another model/config)")
            if (int(plain(pf.attrs.get("row_start", a))), int(plain(pf.attrs.get("row_stop", b)))) != (a, b):
                rep.error(6, f"part file {path}: row_start/row_stop {plain(pf.attrs.get('row_start'))}-"
                             f"{plain(pf.attrs.get('row_stop'))} != mapped rows {a}-{b}")
            if rep.complete and not bool(plain(pf.attrs.get("complete", False))):
                rep.error(6, f"part file {path} is not marked complete in a complete store")
        n_ok += 1
    rep.checked["parts"] = len(srcs)
    rep.checked["parts_present"] = n_ok
    return usable


def _check_features(r: StoreReader, f: Any, rows_mask: np.ndarray, rep: VerifyReport, full: bool, seed: int) -> None:
    """Check 5: finite features of written rows, unit CLS norms; NaN placeholders in unwritten CLS rows."""
    ds = f[L.IMAGE_FEATURES]
    n = ds.shape[0]
    cls_dtype = str(ds.dtype)
    tol = CLS_NORM_TOL.get(cls_dtype, 2e-3)
    normalized = bool(plain(f.attrs.get("cls_normalized", True)))
    nonfinite: list[int] = []
    off_norm: list[int] = []
    not_nan: list[int] = []
    written = r.written().astype(bool)
    for a in range(0, n, _BLOCK_ROWS):
        b = min(n, a + _BLOCK_ROWS)
        block = np.asarray(ds[a:b], dtype=np.float32)
        w = rows_mask[a:b]
        fin = np.isfinite(block).all(axis=1)
        nonfinite.extend((np.flatnonzero(w & ~fin) + a).tolist())
        if normalized:
            norms = np.linalg.norm(block, axis=1)
            off_norm.extend((np.flatnonzero(w & fin & (np.abs(norms - 1) > tol)) + a).tolist())
        un = ~written[a:b]
        not_nan.extend((np.flatnonzero(un & ~np.isnan(block).all(axis=1)) + a).tolist())
    if nonfinite:
        rep.error(5, f"{len(nonfinite)} written rows have NaN/Inf CLS features (rows {_rows_text(nonfinite)})")
    if off_norm:
        rep.error(5, f"{len(off_norm)} written rows have CLS norm off 1 by > {tol} (rows {_rows_text(off_norm)})")
    if not_nan:
        rep.error(4, f"{len(not_nan)} unwritten rows hold CLS values instead of NaN (rows {_rows_text(not_nan)})")
    cand = np.flatnonzero(rows_mask)
    rep.checked["cls_rows"] = int(cand.size)
    if L.IMAGE_TOKENS not in f or cand.size == 0:
        return
    if not full and cand.size > TOKEN_SAMPLE_ROWS:
        cand = np.sort(np.random.default_rng(seed).choice(cand, TOKEN_SAMPLE_ROWS, replace=False))
    tok = f[L.IMAGE_TOKENS]
    bad: list[int] = []
    for a in range(0, cand.size, 64):
        chunk = cand[a:a + 64]
        vals = read_rows(tok, chunk)
        ok = np.isfinite(vals).reshape(len(chunk), -1).all(axis=1)
        bad.extend(chunk[~ok].tolist())
    rep.checked["token_rows"] = int(cand.size)
    if bad:
        rep.error(5, f"{len(bad)} of {cand.size} checked rows have NaN/Inf token features (rows {_rows_text(bad)})")


def _check_templates(r: StoreReader, f: Any, rep: VerifyReport) -> None:
    """Check 7: texts_hash recomputes; attention_mask row sums equal lengths."""
    if L.TEMPLATES not in f:
        return
    names = sorted(f[L.TEMPLATES].keys())
    for name in names:
        g = f[L.TEMPLATES][name]
        if L.TEXTS not in g:
            continue
        texts = L.str_list(g[L.TEXTS][()].tolist())
        stored = plain(g.attrs.get("texts_hash", ""))
        if not stored:
            rep.error(7, f"templates/{name} has no texts_hash")
        elif L.texts_hash(texts) != stored:
            rep.error(7, f"templates/{name}: texts_hash does not match its texts")
        if L.ATTENTION_MASK in g and L.LENGTHS in g:
            sums = np.asarray(g[L.ATTENTION_MASK][()]).astype(np.int64).sum(axis=1)
            if not np.array_equal(sums, np.asarray(g[L.LENGTHS][()]).astype(np.int64)):
                rep.error(7, f"templates/{name}: attention_mask row sums != lengths")
    rep.checked["templates"] = len(names)
