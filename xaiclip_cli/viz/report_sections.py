"""HTML pieces of the report: any JSON result as tables (statistics with their intervals), curve figures, comparisons.

Results are rendered by shape, not by name, so a metric added to ``eval.json`` appears without a change here: a dict
with a ``mean`` is a statistic (shown as ``mean [lo, hi]``), a dict of such dicts is a metric table, a dict of flat
dicts is a breakdown table (per class, per tertile), a list of equal-length number lists is a matrix (confusion
matrix), a list of dicts is a record table, and the rest is key/value rows. Every number sits in an element with its
exact value in ``data-value`` (tests compare them with the JSON). Figures are matplotlib PNGs as data URIs.
"""

from __future__ import annotations

import html
import io
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

INTERVAL_PAIRS = (("ci_low", "ci_high"), ("ci_lo", "ci_hi"), ("lo", "hi"), ("low", "high"), ("lower", "upper"),
                  ("ci95_low", "ci95_high"), ("ci_lower", "ci_upper"))
INTERVAL_LISTS = ("ci", "ci95", "interval", "bootstrap_ci", "ci_95")
LABEL_KEYS = ("labels", "classes", "class_names", "names")
MAX_LIST = 16  # longer number lists are summarised (whole arrays belong in curves.npz)
MAX_DEPTH = 6
MAX_PANELS = 12  # curve panels in the dataset figure
MAX_ROWS = 200  # record-table rows shown (the rest are counted)


def esc(value: Any) -> str:
    """HTML-escaped text of a value."""
    return html.escape(str(value), quote=True)


def is_number(value: Any) -> bool:
    """A JSON number (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt(value: Any) -> str:
    """Display text of a number: integers as they are, floats to 4 significant digits, NaN/inf named."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.4g}"
    return str(value)


def num(value: Any, cls: str = "") -> str:
    """A number in a span carrying its exact value."""
    return f'<span class="v{(" " + cls) if cls else ""}" data-value="{esc(repr(value))}">{esc(fmt(value))}</span>'


def interval(stat: Mapping[str, Any]) -> tuple[Any, Any] | None:
    """The (low, high) bootstrap interval of a statistic dict, wherever its writer put it."""
    for lo, hi in INTERVAL_PAIRS:
        if is_number(stat.get(lo)) and is_number(stat.get(hi)):
            return stat[lo], stat[hi]
    for key in INTERVAL_LISTS:
        v = stat.get(key)
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(is_number(x) for x in v):
            return v[0], v[1]
    return None


def _interval_keys(stat: Mapping[str, Any]) -> set[str]:
    for lo, hi in INTERVAL_PAIRS:
        if is_number(stat.get(lo)) and is_number(stat.get(hi)):
            return {lo, hi}
    for key in INTERVAL_LISTS:
        if key in stat and interval({key: stat[key]}) is not None:
            return {key}
    return set()


def is_stat(value: Any) -> bool:
    """A statistic: a dict with a numeric (or null) ``mean``."""
    return isinstance(value, Mapping) and "mean" in value and (is_number(value["mean"]) or value["mean"] is None)


def is_scalar(value: Any) -> bool:
    """Strings, numbers, bools and None."""
    return value is None or isinstance(value, (str, int, float, bool))


def is_matrix(value: Any) -> bool:
    """A rectangular list of number lists (a confusion matrix), at most 60 × 60."""
    if not (isinstance(value, list) and 1 < len(value) <= 60 and all(isinstance(r, list) for r in value)):
        return False
    width = len(value[0])
    return 0 < width <= 60 and all(len(r) == width and all(is_number(x) for x in r) for r in value)


def scalar_html(value: Any) -> str:
    """A scalar, a short list, or a statistic as inline HTML."""
    if is_stat(value):
        return stat_html(value)
    if is_number(value):
        return num(value)
    if is_scalar(value):
        return esc(fmt(value))
    if isinstance(value, (list, dict)) and not value:
        return '<span class="ci">none</span>'
    if isinstance(value, list) and all(is_scalar(v) for v in value):
        shown = value if len(value) <= MAX_LIST else value[:MAX_LIST]
        parts = [num(v) if is_number(v) else esc(fmt(v)) for v in shown]
        more = f" … ({len(value)} values)" if len(value) > MAX_LIST else ""
        return ", ".join(parts) + more
    if _small_dict(value):
        return ", ".join(f"{esc(k)} {scalar_html(v)}" for k, v in value.items())
    if isinstance(value, list) and all(_small_dict(v, 3) for v in value):
        return "; ".join(", ".join(f"{esc(k)} {scalar_html(v)}" for k, v in d.items()) for d in value[:MAX_LIST])
    text = json.dumps(value, ensure_ascii=False, default=str)
    return f"<code>{esc(text[:300])}{'…' if len(text) > 300 else ''}</code>"


def stat_html(stat: Mapping[str, Any]) -> str:
    """``mean [lo, hi]`` with exact values attached."""
    iv = interval(stat)
    text = num(stat["mean"], "mean") if stat["mean"] is not None else "-"
    if iv is not None:
        text += f' <span class="ci">[{num(iv[0], "lo")}, {num(iv[1], "hi")}]</span>'
    return text


def _small_dict(value: Any, size: int = 12) -> bool:
    """A short dict of scalars (drawn inline as ``k v, k v``)."""
    return isinstance(value, Mapping) and 0 < len(value) <= size and all(is_scalar(v) for v in value.values())


def _is_flat(value: Any) -> bool:
    """A dict whose values all fit in one table cell: a record of a breakdown table."""
    return isinstance(value, Mapping) and all(
        is_scalar(v) or is_stat(v) or _small_dict(v)
        or (isinstance(v, list) and len(v) <= MAX_LIST and all(is_scalar(x) or _small_dict(x, 3) for x in v))
        for v in value.values())


def stats_table(stats: Mapping[str, Mapping[str, Any]], title: str | None = None) -> str:
    """Rows = metrics; columns: mean, 95 % interval, then every other key the statistics carry (n, std, invalid…)."""
    extra: list[str] = []
    for s in stats.values():
        skip = {"mean"} | _interval_keys(s)
        for k in s:
            if k not in skip and k not in extra:
                extra.append(k)
    head = "<tr><th>metric</th><th>mean</th><th>95 % interval</th>" + "".join(f"<th>{esc(k)}</th>" for k in extra)
    rows = []
    for name, s in stats.items():
        iv = interval(s)
        ci = f'[{num(iv[0], "lo")}, {num(iv[1], "hi")}]' if iv else "-"
        mean = num(s["mean"], "mean") if s["mean"] is not None else "-"
        cells = "".join(f"<td>{scalar_html(s.get(k))}</td>" for k in extra)
        rows.append(f'<tr data-metric="{esc(name)}"><th>{esc(name)}</th><td>{mean}</td><td>{ci}</td>{cells}</tr>')
    cap = f"<caption>{esc(title)}</caption>" if title else ""
    return f'<table class="stats">{cap}<thead>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def records_table(rows: Sequence[Mapping[str, Any]], title: str | None = None, index: str | None = None,
                  keys: Sequence[str] | None = None) -> str:
    """A table of records (columns = union of keys); ``keys`` adds a first column named ``index``."""
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    head = (f"<th>{esc(index)}</th>" if index is not None else "") + "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = []
    more = len(rows) - MAX_ROWS
    for i, r in enumerate(rows[:MAX_ROWS]):
        first = f"<th>{esc(keys[i])}</th>" if keys is not None else ""
        body.append("<tr>" + first + "".join(f"<td>{scalar_html(r.get(c))}</td>" for c in cols) + "</tr>")
    if more > 0:
        span = len(cols) + (1 if index is not None else 0)
        body.append(f'<tr><td colspan="{span}" class="ci">… {more} more rows (in the result files)</td></tr>')
    cap = f"<caption>{esc(title)}</caption>" if title else ""
    return f'<table class="records">{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def matrix_table(matrix: Sequence[Sequence[float]], labels: Sequence[str] | None, title: str) -> str:
    """A matrix (confusion matrix: rows true, columns predicted) with cells shaded by value."""
    arr = np.asarray(matrix, dtype=float)
    top = float(np.nanmax(arr)) if arr.size and np.isfinite(arr).any() else 1.0
    n_r, n_c = arr.shape
    rl = list(labels) if labels is not None and len(labels) == n_r else [str(i) for i in range(n_r)]
    cl = list(labels) if labels is not None and len(labels) == n_c else [str(i) for i in range(n_c)]
    head = "<tr><th></th>" + "".join(f"<th>{esc(c)}</th>" for c in cl) + "</tr>"
    body = []
    for i in range(n_r):
        cells = []
        for j in range(n_c):
            v = matrix[i][j]
            shade = 0.0 if top <= 0 or not math.isfinite(float(v)) else max(0.0, float(v)) / top
            cells.append(f'<td style="background:rgba(0,114,178,{shade * 0.7:.2f})">{num(v)}</td>')
        body.append(f"<tr><th>{esc(rl[i])}</th>{''.join(cells)}</tr>")
    return (f'<table class="matrix"><caption>{esc(title)}</caption><thead>{head}</thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def kv_table(items: Iterable[tuple[str, Any]], title: str | None = None) -> str:
    """Key/value rows."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{scalar_html(v)}</td></tr>" for k, v in items)
    if not rows:
        return ""
    cap = f"<caption>{esc(title)}</caption>" if title else ""
    return f'<table class="kv">{cap}<tbody>{rows}</tbody></table>'


def render_value(value: Any, title: str, depth: int = 0, labels: Sequence[str] | None = None) -> str:
    """Any JSON value as HTML by its shape (see the module docstring)."""
    if depth > MAX_DEPTH:
        return f"<h4>{esc(title)}</h4>" + scalar_html(value)
    if is_stat(value):
        return stats_table({title: value})
    if is_matrix(value):
        return matrix_table(value, labels, title)
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        if all(_is_flat(v) for v in value):
            return records_table(value, title)
        return "".join(render_value(v, f"{title}[{i}]", depth + 1, labels) for i, v in enumerate(value))
    if isinstance(value, Mapping):
        return render_dict(value, title, depth, labels)
    return kv_table([(title, value)])


def _has(value: Any, test: Any) -> bool:
    """Whether ``test`` holds for ``value`` or anything nested in it."""
    if test(value):
        return True
    if isinstance(value, Mapping):
        return any(_has(v, test) for v in value.values())
    if isinstance(value, list):
        return any(_has(v, test) for v in value[:50])
    return False


def _same_columns(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Records share their keys (a breakdown such as per class), rather than being unrelated blocks."""
    keys = [set(r) for r in rows]
    union = set().union(*keys)
    common = set.intersection(*keys)
    return bool(common) and len(common) * 2 >= len(union)


_OPEN_KEYS = ("concept", "table", "verdict", "compar", "paired", "sanity", "band")


def _important(key: str, value: Any) -> bool:
    """Blocks shown open: they hold statistics, matrices or record tables, or are named like results."""
    if any(w in str(key).lower() for w in _OPEN_KEYS):
        return True
    return _has(value, lambda x: is_stat(x) or is_matrix(x) or (
        isinstance(x, list) and bool(x) and all(isinstance(v, Mapping) for v in x)))


def render_dict(d: Mapping[str, Any], title: str | None, depth: int = 0,
                labels: Sequence[str] | None = None) -> str:
    """A dict: statistics first (one metric table), then key/value rows, then each nested block; blocks holding no
    statistic or matrix (settings, versions) are collapsed."""
    if not d:
        return ""
    labels = next((d[k] for k in LABEL_KEYS if isinstance(d.get(k), list) and all(is_scalar(x) for x in d[k])),
                  labels)  # class names label the confusion matrices below them
    values = list(d.values())
    if all(is_stat(v) for v in values):
        return stats_table(d, title)
    if len(values) > 1 and all(_is_flat(v) and not is_stat(v) for v in values) and _same_columns(values):
        keys = [str(k) for k in d]
        return records_table(list(values), title, index="", keys=keys)
    scalars = [(k, v) for k, v in d.items() if (is_scalar(v) or (isinstance(v, list) and not is_matrix(v) and all(
        is_scalar(x) for x in v)))]
    scalar_keys = {k for k, _ in scalars}
    stats = {k: v for k, v in d.items() if is_stat(v)}
    out = []
    if title:
        level = min(3 + depth, 6)
        out.append(f"<h{level}>{esc(title)}</h{level}>")
    if stats:
        out.append(stats_table(stats))
    if scalars:
        out.append(kv_table(scalars))
    nested = [(k, v) for k, v in d.items() if k not in scalar_keys and k not in stats and v not in ({}, [])]
    important = [(k, v) for k, v in nested if _important(k, v)]
    rest = [(k, v) for k, v in nested if not any(k == i for i, _ in important)]
    for k, v in important:
        block = render_value(v, str(k), depth + 1, labels)
        if isinstance(v, Mapping) and not all(is_stat(x) for x in v.values()):
            block = f'<div class="nest">{block}</div>'
        out.append(block)
    for k, v in rest:
        inner = render_value(v, "", depth + 1, labels) if isinstance(v, Mapping) else render_value(
            v, str(k), depth + 1, labels)
        out.append(f'<details class="nest"><summary>{esc(k)}</summary>{inner}</details>')
    return "".join(out)


def collect_stats(value: Any, prefix: str = "") -> dict[str, Mapping[str, Any]]:
    """Every statistic in a JSON tree, keyed by its dotted path (for the comparison across inputs)."""
    out: dict[str, Mapping[str, Any]] = {}
    if is_stat(value):
        out[prefix or "value"] = value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            out.update(collect_stats(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def comparison_table(per_source: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Metrics found in two or more inputs side by side (rows = metric path, columns = input)."""
    names = list(per_source)
    paths: list[str] = []
    for stats in per_source.values():
        for p in stats:
            if p not in paths:
                paths.append(p)
    shared = [p for p in paths if sum(p in s for s in per_source.values()) >= 2]
    if not shared:
        return ""
    names = [n for n in names if any(p in per_source[n] for p in shared)]
    head = "<tr><th>metric</th>" + "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr>"
    rows = []
    for p in shared:
        cells = "".join(f"<td>{stat_html(per_source[n][p]) if p in per_source[n] else '-'}</td>" for n in names)
        rows.append(f"<tr><th>{esc(p)}</th>{cells}</tr>")
    return (f'<table class="compare"><caption>Across inputs (mean [95 % interval])</caption><thead>{head}</thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _bootstrap_band(y: np.ndarray, seed: int = 0, n_boot: int = 500) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over rows and its 95 % percentile bootstrap band (rows resampled, numpy PCG64 with ``seed``)."""
    y = y[np.isfinite(y).any(axis=1)]  # NaN-padded curves (attrib k varies per image) keep their finite part
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN and are not drawn
        mean = np.nanmean(y, axis=0)
        if y.shape[0] < 2:
            return mean, mean, mean
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, y.shape[0], size=(n_boot, y.shape[0]))
        means = np.nanmean(y[idx], axis=1)
        lo, hi = np.nanpercentile(means, [2.5, 97.5], axis=0)
    return mean, lo, hi


def curves_figure(curves: Mapping[str, Mapping[str, tuple[np.ndarray | None, np.ndarray]]],
                  bands: Mapping[str, Mapping[str, float]] | None = None,
                  ticks: Mapping[str, Sequence[str]] | None = None) -> str | None:
    """One PNG (data URI): a panel per curve name, a line per input; [N, T] curves show the mean and its band.

    ``bands`` (curve name → input → level) draws a dashed reference line: the sanity checks' random-pair band.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from xaiclip_cli.viz.thumbs import CURVE_COLOURS, png_bytes_uri

    names = list(curves)[:MAX_PANELS]
    if not names:
        return None
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        sanity = name.startswith("sim_")
        for i, (src, (x, y)) in enumerate(curves[name].items()):
            colour = CURVE_COLOURS[i % len(CURVE_COLOURS)]
            y2 = y if y.ndim == 2 else y[None, :]
            if not np.isfinite(y2).any():
                continue
            mean, lo, hi = _bootstrap_band(y2)
            default_x = np.arange(y2.shape[1], dtype=float) if sanity else np.linspace(0.0, 1.0, y2.shape[1])
            xx = x if x is not None else default_x
            if xx.ndim == 2:  # per-image x (attrib areas): the mean x of each step
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    xx = np.nanmean(xx, axis=0)
            if xx.shape[0] != mean.shape[0]:
                xx = default_x
            n = y2.shape[0]
            ax.plot(xx, mean, color=colour, lw=1.6, label=f"{src} (n={n})")
            if n > 1:
                ax.fill_between(xx, lo, hi, color=colour, alpha=0.2, lw=0)
            level = (bands or {}).get(name, {}).get(src)
            if level is not None:
                ax.axhline(level, color=colour, ls="--", lw=1, label=f"{src}: random-pair band")
        ax.set_title(name, fontsize=10)
        labels = list((ticks or {}).get(name, []))
        if sanity and labels:
            ax.set_xticks(range(len(labels)), [t if len(t) <= 14 else t[:13] + "…" for t in labels], rotation=40,
                          ha="right", fontsize=6)
        ax.set_xlabel(("prompt" if "prompt" in name else "randomisation step (0 = trained)") if sanity
                      else "fraction", fontsize=8)
        ax.set_ylabel("similarity to the trained map" if sanity else "score", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})  # no URL in the file
    plt.close(fig)
    return png_bytes_uri(buf.getvalue())
