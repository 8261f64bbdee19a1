"""The `xaiclip db` command group: read a feature library the way the seed's database_access.py does, plus verify."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from xaiclip_cli.cli.app import group_app
from xaiclip_cli.cli.command import settings_command
from xaiclip_cli.cli.output import RunContext
from xaiclip_cli.config.db import DbSettings
from xaiclip_cli.errors import UsageError

app = group_app("Read a feature library: summarize, tree, sample, batch, templates, fetch, clear, verify.")


class ArrayInfo(BaseModel):
    """What --json shows of an array instead of its values: shape, dtype, a few values and norms."""

    shape: list[int]
    dtype: str
    head: list[float | int | str | None] = Field(default_factory=list, description="first values, flattened")
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    norm: float | None = Field(None, description="L2 norm over the last axis, averaged over the other axes")
    n_nan: int = 0


def array_info(arr: Any, n_head: int = 5) -> ArrayInfo:
    """Summarise an array for tables and JSON (big arrays are never dumped)."""
    import numpy as np

    a = np.asarray(arr)
    flat = a.reshape(-1)
    info = ArrayInfo(shape=list(a.shape), dtype=str(a.dtype))
    if a.dtype.kind in "fiub" and a.size:
        finite = flat[np.isfinite(flat)] if a.dtype.kind == "f" else flat
        info.head = [None if (a.dtype.kind == "f" and not np.isfinite(v)) else v.item() for v in flat[:n_head]]
        info.n_nan = int(np.count_nonzero(np.isnan(flat))) if a.dtype.kind == "f" else 0
        if finite.size:
            info.min, info.max = float(finite.min()), float(finite.max())
            info.mean = float(finite.astype(np.float64).mean())
        if a.dtype.kind == "f" and a.ndim >= 1:
            norms = np.linalg.norm(a.astype(np.float32), axis=-1)
            info.norm = float(np.nanmean(norms)) if np.isfinite(norms).any() else None
    elif a.size:
        info.head = [str(v) for v in flat[:n_head]]
    return info


def _array_text(d: dict[str, Any]) -> str:
    """One line for an ArrayInfo in a table: shape, dtype, norm and the first values."""
    def num(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    parts = [f"{d['shape']} {d['dtype']}"]
    if d.get("norm") is not None:
        parts.append(f"norm {d['norm']:.4g}")
    if d.get("n_nan"):
        parts.append(f"{d['n_nan']} NaN")
    if d.get("head"):
        parts.append("[" + ", ".join(num(v) for v in d["head"]) + ", ...]")
    return ", ".join(parts)


class _Tables(BaseModel):
    """Result base with a people-friendly table view: arrays as one line, nested dicts as their own tables."""

    def __rich_tables__(self) -> list[Any]:
        """Key/value table of scalars; a table per nested dict or list of records."""
        import json

        from rich.markup import escape
        from rich.table import Table

        def kv(title: str) -> Table:
            t = Table(title=escape(title), title_justify="left", show_header=False)
            t.add_column("field", style="bold")
            t.add_column("value")
            return t

        def cell(v: Any) -> str:
            if isinstance(v, dict) and "shape" in v and "dtype" in v:
                return escape(_array_text(v))
            if isinstance(v, float):
                return f"{v:.6g}"
            if isinstance(v, (dict, list)):
                return escape(json.dumps(v, ensure_ascii=False))
            return "-" if v is None else escape(str(v))

        data = self.model_dump(mode="json")
        main = kv((type(self).__doc__ or "").strip().splitlines()[0])
        extra: list[Any] = []
        for key, value in data.items():
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                cols = list(dict.fromkeys(k for v in value for k in v))
                t = Table(title=escape(key), title_justify="left")
                for c in cols:
                    t.add_column(escape(c))
                for v in value:
                    t.add_row(*[cell(v.get(c)) for c in cols])
                extra.append(t)
            elif isinstance(value, dict) and value and not ("shape" in value and "dtype" in value):
                t = kv(key)
                for k, v in value.items():
                    t.add_row(escape(str(k)), cell(v))
                extra.append(t)
            else:
                main.add_row(escape(key), cell(value))
        return [main, *extra]


def _reader(s: DbSettings) -> Any:
    from xaiclip_cli.store.reader import StoreReader

    return StoreReader(s.h5)


def _export(s: DbSettings, arrays: dict[str, Any], primary: str | None = None) -> str | None:
    if s.out is None:
        return None
    from xaiclip_cli.store.export import save_arrays

    return str(save_arrays(s.out, arrays, overwrite=s.overwrite, primary=primary))


def _kind(s: DbSettings) -> str | None:
    if s.concept and s.label:
        raise UsageError("--concept and --label are mutually exclusive")
    return "concept" if s.concept else "label" if s.label else None


# ---------------------------------------------------------------------------------------------------- summarize
class SummaryResult(_Tables):
    """Store summary"""

    path: str
    image_features: list[int] | None
    image_token_features: list[int] | None
    ids_preview: list[int]
    split_counts: dict[str, Any]
    n_templates: int
    templates: list[str]
    provenance: dict[str, Any]
    completeness: dict[str, Any]


@settings_command(app, DbSettings, fields=["h5", "max_templates"])
def summarize(s: DbSettings, ctx: RunContext) -> SummaryResult:
    """Overview of a store: shapes, first ids, split counts, template groups, provenance and completeness."""
    with _reader(s) as r:
        return SummaryResult(**r.summarize(max_templates=s.max_templates))


# ---------------------------------------------------------------------------------------------------------- tree
class TreeResult(BaseModel):
    """Store structure"""

    path: str
    datasets: list[dict[str, Any]]
    attrs: list[str]
    other_attrs: list[str]
    groups: list[str]
    templates: list[dict[str, Any]]
    n_templates: int

    def __rich_tables__(self) -> list[Any]:
        """Draw the seed's tree view with rich."""
        from pathlib import Path

        from rich.markup import escape
        from rich.tree import Tree

        root = Tree(escape(Path(self.path).name))
        for d in self.datasets:
            virt = " (virtual)" if d.get("virtual") else ""
            root.add(escape(f"{d['path']}  # {d['shape']} {d['dtype']}{virt}"))
        root.add(escape("attrs: {" + ", ".join(self.attrs) + "}"))
        for g in self.groups:
            if g == "templates":
                continue
            root.add(escape(f"{g}/"))
        tnode = root.add("templates/")
        for t in self.templates:
            node = tnode.add(escape(t["name"] + "/"))
            for d in t["datasets"]:
                node.add(escape(f"{d['path'].rsplit('/', 1)[-1]}  # {d['shape']} ({d['dtype']})"))
            node.add(escape("attrs: {" + ", ".join(t["attrs"]) + "}"))
        if self.n_templates > len(self.templates):
            tnode.add("...")
        return [root]


@settings_command(app, DbSettings, fields=["h5", "max_templates"])
def tree(s: DbSettings, ctx: RunContext) -> TreeResult:
    """Structure of a store: datasets with shapes and dtypes, the seed root attributes, template groups."""
    with _reader(s) as r:
        return TreeResult(**r.tree(max_templates=s.max_templates))


# -------------------------------------------------------------------------------------------------------- sample
class SampleResult(_Tables):
    """Sample"""

    index: int
    id: int
    label: int
    split: str
    image_feature: ArrayInfo
    image_token_feature: ArrayInfo | None
    out: str | None = None


@settings_command(app, DbSettings, fields=["h5", "out", "overwrite"], arguments=["index"])
def sample(s: DbSettings, ctx: RunContext) -> SampleResult:
    """One row by its row number INDEX: CLS feature, token features, id, label and split (--out FILE.npz saves them)."""
    import numpy as np

    if s.index is None:
        raise UsageError("missing INDEX: the row number to read, e.g. 'xaiclip db sample 0'")
    with _reader(s) as r:
        smp = r.sample(s.index)
    arrays: dict[str, Any] = {"image_feature": smp.image_feature}
    if smp.image_token_feature is not None:
        arrays["image_token_feature"] = smp.image_token_feature
    arrays.update(id=np.int64(smp.id), label=np.int64(smp.label), split=np.str_(smp.split))
    if s.out is not None and s.out.suffix.lower() != ".npz":
        raise UsageError("sample holds several arrays (features, tokens, id, label, split); use --out FILE.npz")
    out = _export(s, arrays)
    return SampleResult(
        index=smp.index, id=smp.id, label=smp.label, split=smp.split,
        image_feature=array_info(smp.image_feature),
        image_token_feature=None if smp.image_token_feature is None else array_info(smp.image_token_feature),
        out=out,
    )


# --------------------------------------------------------------------------------------------------------- batch
class BatchResult(_Tables):
    """Batch"""

    split: str
    feature: str
    n: int
    rows_head: list[int] = Field(description="first store row numbers of the selection")
    values: ArrayInfo
    out: str | None = None


@settings_command(app, DbSettings, fields=["h5", "split", "idx", "feature", "max_rows", "out", "overwrite"])
def batch(s: DbSettings, ctx: RunContext) -> BatchResult:
    """Rows of one column (image, patches or label) at positions --idx within --split, in the order given."""
    from xaiclip_cli.store.reader import parse_idx

    idx = parse_idx(s.idx)
    with _reader(s) as r:
        rows, values = r.batch(s.split, idx, s.feature, max_rows=s.max_rows)
    out = _export(s, {s.feature: values, "rows": rows}, primary=s.feature)
    return BatchResult(split=s.split, feature=s.feature, n=int(rows.size), rows_head=[int(x) for x in rows[:10]],
                       values=array_info(values), out=out)


# ----------------------------------------------------------------------------------------------------- templates
class TemplatesResult(_Tables):
    """Template groups"""

    n: int
    templates: list[dict[str, Any]]


@settings_command(app, DbSettings, fields=["h5", "concept", "label"])
def templates(s: DbSettings, ctx: RunContext) -> TemplatesResult:
    """List the template groups (sorted), optionally only --concept or --label ones, with K and texts_hash."""
    with _reader(s) as r:
        infos = [r.template_info(n) for n in r.template_names(_kind(s))]
    return TemplatesResult(n=len(infos), templates=infos)


# --------------------------------------------------------------------------------------------------------- fetch
class FetchResult(_Tables):
    """Template features"""

    feature: str
    concept_list: list[str]
    groups: list[dict[str, Any]]
    out: str | None = None


@settings_command(app, DbSettings,
                  fields=["h5", "template", "concept", "label", "concept_list", "text_feature", "out", "overwrite"])
def fetch(s: DbSettings, ctx: RunContext) -> FetchResult:
    """Text (or text-token) features of template groups; --concept-list keeps those concepts' rows, in that order."""
    with _reader(s) as r:
        feats = r.fetch(s.template or None, _kind(s), s.concept_list or None, s.text_feature)
    out = _export(s, feats)
    groups = [{"name": k, **array_info(v).model_dump()} for k, v in feats.items()]
    return FetchResult(feature=s.text_feature, concept_list=list(s.concept_list), groups=groups, out=out)


# --------------------------------------------------------------------------------------------------------- clear
class ClearResult(_Tables):
    """Cleared templates"""

    path: str
    n_cleared: int
    cleared: list[str]


@settings_command(app, DbSettings, fields=["h5", "yes"])
def clear(s: DbSettings, ctx: RunContext) -> ClearResult:
    """Delete every template group (keeps an empty templates/ group); needs --yes. 'store text' writes them again."""
    from xaiclip_cli.store.reader import clear_templates

    names = clear_templates(s.h5, yes=s.yes)
    return ClearResult(path=str(s.h5), n_cleared=len(names), cleared=names)


# -------------------------------------------------------------------------------------------------------- verify
class VerifyResult(_Tables):
    """Store verification"""

    path: str
    ok: bool
    n_errors: int
    n_warnings: int
    complete: bool
    checked: dict[str, Any]
    issues: list[dict[str, Any]]


@settings_command(app, DbSettings, fields=["h5", "require_complete", "full"])
def verify(s: DbSettings, ctx: RunContext) -> VerifyResult:
    """Check a store against the layout contract (structure, counts, rows, features, parts, texts); exit 1 on errors."""
    from xaiclip_cli.store.verify import verify_store

    report = verify_store(s.h5, require_complete=s.require_complete, full=s.full)
    if not report.ok:
        ctx.exit_code = 1
    return VerifyResult(
        path=str(s.h5), ok=report.ok, n_errors=len(report.errors), n_warnings=len(report.warnings),
        complete=report.complete, checked=report.checked,
        issues=[{"check": i.check, "level": i.level, "message": i.message} for i in report.issues],
    )
