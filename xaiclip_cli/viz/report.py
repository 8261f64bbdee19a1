"""`eval report`: one self-contained HTML file (inline CSS/JS, data-URI images, no requests) from any mix of inputs.

Hand-written HTML (string templates, escaped) because the report must open on an air-gapped machine: template or
dashboard libraries pull fonts, CDNs or a server. A Content-Security-Policy meta tag forbids every request except
``data:`` images, so a stray URL fails loudly in the browser test instead of leaking. See metrics.md §12.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.viz.report_sections import (
    MAX_PANELS,
    collect_stats,
    comparison_table,
    curves_figure,
    esc,
    fmt,
    kv_table,
    records_table,
    render_dict,
    scalar_html,
)
from xaiclip_cli.viz.report_sources import DatasetCache, Item, Source, read_source

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
# Metrics where a low value is the good one: their worst explanations are the highest.
_LOWER_IS_BETTER = re.compile(r"deletion|\bdel\b|drop|error|loss|distance|p_value|pvalue", re.IGNORECASE)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")

_CSS = """

body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
header{background:#123;color:#fff;padding:12px 20px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;opacity:.8}nav{padding:6px 20px;font-size:12px}nav a{color:#0b5394}main{padding:8px 20px 40px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;margin:12px 0;padding:8px 14px}
h2{font-size:16px;margin:6px 0 8px}h3{font-size:14px;margin:10px 0 4px}h4,h5,h6{font-size:13px;margin:8px 0 4px}
table{border-collapse:collapse;margin:4px 0 8px;font-size:12px}
caption{text-align:left;font-weight:600;padding:2px 0}
th,td{border:1px solid #e2e2e2;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f3f5f7;font-weight:600}td .v,td.v{font-variant-numeric:tabular-nums}.ci{color:#555}
.nest{margin-left:10px;border-left:3px solid #eef;padding-left:8px}details{margin:4px 0}
summary{cursor:pointer;color:#0b5394}
pre{background:#f6f8fa;padding:6px;overflow:auto;max-height:320px;font-size:11px}
.prov{display:flex;flex-wrap:wrap;gap:12px}.prov>div{flex:1 1 380px;min-width:320px;max-width:100%}
.prov table{max-width:100%}.prov td{overflow-wrap:anywhere}
.kind{display:inline-block;padding:0 6px;border-radius:3px;background:#def;color:#034;font-size:11px;margin-right:6px}
.warn{color:#8a4b00}.fig{max-width:100%;height:auto;border:1px solid #eee}#controls{margin:6px 0 10px}
#controls select{font-size:12px;margin-right:8px}#gallery{display:flex;flex-wrap:wrap;gap:8px}
.card{background:#fff;border:1px solid #ccc;border-radius:5px;padding:6px;width:max-content;max-width:min(100%,560px)}
.card .ttl{font-weight:600;font-size:12px;margin-bottom:3px}.card .sub{color:#555;font-size:11px}
.pics{display:flex;gap:4px;flex-wrap:wrap}figure{margin:0;text-align:center}
figcaption{font-size:10px;color:#444;max-width:120px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.mini{font-size:11px;margin:3px 0 0}.mini th{font-weight:400;background:#fafafa;cursor:pointer}
.spark{display:block;margin-top:3px}.sorted{outline:2px solid #D55E00}.rest{columns:4 200px;font-size:11px}
"""

_JS = """
(function(){
  const g=document.getElementById('gallery'), sel=document.getElementById('sortby');
  const dir=document.getElementById('sortdir');
  if(!g||!sel)return;
  function val(c,m){const v=JSON.parse(c.dataset.m)[m];return (typeof v==='number')?v:null;}
  function sortCards(){
    const m=sel.value, d=dir.value==='asc'?1:-1, cards=Array.from(g.children);
    cards.sort(function(a,b){const x=val(a,m),y=val(b,m);
      if(x===null&&y===null)return a.dataset.key.localeCompare(b.dataset.key);
      if(x===null)return 1; if(y===null)return -1;
      return d*(x-y)||a.dataset.key.localeCompare(b.dataset.key);});
    cards.forEach(function(c){g.appendChild(c);
      c.querySelectorAll('tr[data-metric]').forEach(function(r){r.classList.toggle('sorted',r.dataset.metric===m);});});
  }
  sel.addEventListener('change',function(){
    const o=sel.options[sel.selectedIndex];dir.value=o.dataset.worst;sortCards();});
  dir.addEventListener('change',sortCards);
  document.querySelectorAll('th[data-sort]').forEach(function(th){th.addEventListener('click',function(){
    sel.value=th.dataset.sort;sel.dispatchEvent(new Event('change'));});});
})();
"""


def lower_is_better(metric: str) -> bool:
    """Whether low values of a per-image metric are the good ones (deletion AUC, drop, errors)."""
    return bool(_LOWER_IS_BETTER.search(metric))


def find_chromium() -> str | None:
    """The Chromium/Chrome executable (``XAICLIP_CHROMIUM`` wins), or None."""
    env = os.environ.get("XAICLIP_CHROMIUM")
    if env:
        return env
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1280, height: int = 2000,
               timeout: float = 120.0) -> Path:
    """Render an HTML file in headless Chromium and save a PNG of the first ``width`` × ``height`` pixels."""
    chromium = find_chromium()
    if chromium is None:
        raise XaiclipError("screenshot needs chromium (Debian: apt-get install chromium)")
    html_file = Path(html_path).resolve()
    if not html_file.is_file():
        raise UsageError(f"{html_path}: not found")
    png = Path(png_path).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="xaiclip-chromium-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
               f"--window-size={width},{height}", html_file.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not png.is_file():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise XaiclipError(f"chromium screenshot failed (exit {proc.returncode}): {tail[0]}")
    return png


# ------------------------------------------------------------------------------------------------ merging
def merge_items(sources: Sequence[Source]) -> tuple[list[Item], list[str]]:
    """Join gallery items of all inputs by image key; a metric name found in two inputs gets the input's label."""
    owners: dict[str, set[str]] = {}
    for src in sources:
        for it in src.items:
            for m in it.metrics:
                owners.setdefault(m, set()).add(src.label)
    aliases = {a: k for src in sources for a, k in src.aliases.items()}
    merged: dict[str, Item] = {}
    metrics: list[str] = []
    for src in sources:
        for it in src.items:
            key = aliases.get(it.key, it.key)
            tgt = merged.setdefault(key, Item(key))
            tgt.pictures.extend(p for p in it.pictures
                                if not (p.caption == "input" and any(q.caption == "input" for q in tgt.pictures)))
            tgt.curves.extend(it.curves)
            if it.curves:
                tgt.curve_groups.setdefault(src.short, []).extend(it.curves)
            for k, v in it.info.items():
                tgt.info.setdefault(k, v)
            if tgt.mask is None and it.mask is not None:
                tgt.mask = it.mask
            for m, v in it.metrics.items():
                name = m if len(owners[m]) == 1 else f"{src.short}: {m}"
                tgt.metrics[name] = v
                if name not in metrics:
                    metrics.append(name)
    for it in merged.values():  # the input picture first, whichever input brought it
        it.pictures.sort(key=lambda p: p.caption != "input")
    return list(merged.values()), metrics


def default_sort_metric(sources: Sequence[Source], metrics: Sequence[str]) -> str | None:
    """The first metric of an eval input, else the first of any input."""
    eval_names = {m for s in sources if s.kind == "eval" for it in s.items for m in it.metrics}
    for m in metrics:
        if m in eval_names or any(m.endswith(f": {e}") for e in eval_names):
            return m
    return metrics[0] if metrics else None


def order_items(items: list[Item], metric: str | None) -> list[Item]:
    """Worst first by ``metric`` (items without it last, then by key)."""
    if metric is None:
        return sorted(items, key=lambda it: it.key)
    sign = -1.0 if lower_is_better(metric) else 1.0

    def key(it: Item) -> tuple[int, float, str]:
        v = it.metrics.get(metric)
        return (1, 0.0, it.key) if v is None else (0, sign * v, it.key)

    return sorted(items, key=key)


# ------------------------------------------------------------------------------------------------ rendering
def _picture_html(it: Item, thumb: int, counters: dict[str, int]) -> str:
    from xaiclip_cli.viz.thumbs import data_uri, draw_contour, thumbnail

    parts = []
    for pic in it.pictures:
        try:
            arr = pic.sized(thumb) if pic.sized is not None else pic.load()
        except Exception:  # noqa: BLE001 - one unreadable picture must not lose the report
            arr = None
        if arr is None:
            counters["missing"] += 1
            continue
        small = thumbnail(arr, thumb)
        caption = pic.caption
        if pic.caption == "input" and it.mask is not None:
            try:
                mask = it.mask()
            except Exception:  # noqa: BLE001
                mask = None
            if mask is not None and np.asarray(mask).any():
                small = draw_contour(small, np.asarray(mask))
                caption = "input + mask"
        uri = data_uri(small, pic.fmt)
        counters["images"] += 1
        h, w = small.shape[:2]
        parts.append(f'<figure><img src="{uri}" width="{w}" height="{h}" alt="{esc(caption)}">'
                     f'<figcaption title="{esc(caption)}">{esc(caption)}</figcaption></figure>')
    return "".join(parts)


def _card(it: Item, thumb: int, counters: dict[str, int], sort_by: str | None) -> str:
    from xaiclip_cli.viz.thumbs import sparkline_svg

    pics = _picture_html(it, thumb, counters)
    sparks = []
    for group, curves in list(it.curve_groups.items())[:4]:
        svg = sparkline_svg(curves[:4], width=max(110, thumb + 14), height=60)
        if svg:
            sparks.append(f'<figure>{svg}<figcaption title="{esc(group)}">{esc(group)}</figcaption></figure>')
    spark = f'<div class="pics">{"".join(sparks)}</div>' if sparks else ""
    rows = "".join(
        f'<tr data-metric="{esc(m)}"{" class=sorted" if m == sort_by else ""}>'
        f'<th data-sort="{esc(m)}" title="sort the gallery by this metric">{esc(m)}</th>'
        f'<td><span class="v" data-value="{esc(repr(v))}">{esc(fmt(v))}</span></td></tr>'
        for m, v in it.metrics.items())
    info = " · ".join(f"{esc(k)}: {esc(v)}" for k, v in it.info.items() if v)
    data = esc(json.dumps(it.metrics, allow_nan=False, default=float))
    return (f'<div class="card" data-key="{esc(it.key)}" data-m="{data}"><div class="ttl">{esc(it.key)}</div>'
            f'<div class="sub">{info}</div><div class="pics">{pics}</div>{spark}'
            f'<table class="mini">{rows}</table></div>')


def _provenance_html(src: Source) -> str:
    prov = dict(src.provenance)
    versions = prov.pop("versions", None)
    counts = prov.pop("counts", None)
    rows: list[tuple[str, Any]] = [("kind", src.kind), ("path", str(src.path))]
    rows += [(k, json.dumps(v, ensure_ascii=False) if isinstance(v, dict) else v) for k, v in prov.items()]
    out = [f'<div><h3><span class="kind">{esc(src.kind)}</span>{esc(src.label)}</h3>', kv_table(rows)]
    if counts:
        out.append(kv_table(list(counts.items()), "counts"))
    if versions:
        out.append(f"<details><summary>versions</summary>{kv_table(list(versions.items()))}</details>")
    for name, text in src.configs.items():
        what = esc(name) if "provenance" in name else f"{esc(name)} (resolved)"
        out.append(f"<details><summary>{what}</summary><pre>{esc(text)}</pre></details>")
    out.append("</div>")
    return "".join(out)


def _counts_html(counts: dict[str, Any]) -> str:
    """``images 3, evaluated 3, skipped none`` (nested reason counts inline)."""
    if not counts:
        return "-"
    parts = []
    for k, v in counts.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a} {b}" for a, b in v.items()) or "none"
        parts.append(f"{esc(k)} {scalar_html(v) if not isinstance(v, str) else esc(v)}")
    return ", ".join(parts)


def _provenance_summary(sources: Sequence[Source]) -> str:
    """One row per input: kind, model, weights hash (first 12 hex, full on hover), data set, counts."""
    rows = []
    for src in sources:
        prov = src.provenance
        full = str(prov.get("weights hash", ""))
        short = full.split(":")[-1][:12]
        counts = prov.get("counts") or {}
        dataset = prov.get("dataset", "")
        rows.append(
            f'<tr><th>{esc(src.label)}</th><td><span class="kind">{esc(src.kind)}</span></td>'
            f'<td>{esc(prov.get("model", "-"))}</td><td title="{esc(full)}"><code>{esc(short or "-")}</code></td>'
            f'<td>{esc(json.dumps(dataset) if isinstance(dataset, dict) else dataset or "-")}</td>'
            f"<td>{_counts_html(counts)}</td></tr>")
    return ('<table class="records"><thead><tr><th>input</th><th>kind</th><th>model</th><th>weights hash</th>'
            f'<th>data set</th><th>counts</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _results_html(src: Source) -> str:
    if not src.results:
        return ""
    # Versions and model identity are in the provenance header already.
    shown = {k: v for k, v in src.results.items() if k not in ("versions", "lib_versions", "provenance")}
    body = render_dict(shown, None)
    return f'<section><h2><span class="kind">{esc(src.kind)}</span>{esc(src.label)}</h2>{body}</section>'


# Settings that change no number: results differing only in these are still compared.
_IGNORED_SETTINGS = ("bootstrap", "bootstrap_seed")


def _settings_of(src: Source) -> dict[str, Any]:
    settings = src.results.get("settings")
    return {k: v for k, v in (settings if isinstance(settings, dict) else {}).items() if k not in _IGNORED_SETTINGS}


def _paired_rows(a: Source, b: Source) -> list[dict[str, Any]]:
    """Per shared per-image metric: mean of a − b over the images both scored, paired bootstrap interval and
    Wilcoxon p (metrics.bootstrap.paired_comparison, metrics.md §11)."""
    try:
        from xaiclip_cli.metrics.bootstrap import paired_comparison
    except ImportError:  # the eval library is not installed: dataset-level comparison only
        return []
    va = {it.key: it.metrics for it in a.items}
    vb = {it.key: it.metrics for it in b.items}
    keys = sorted(set(va) & set(vb))
    names = [m for m in dict.fromkeys(m for k in keys for m in va[k]) if any(m in vb[k] for k in keys)]
    rows = []
    for m in names:
        both = [k for k in keys if m in va[k] and m in vb[k]]
        if len(both) < 2:
            continue
        res = paired_comparison(np.array([va[k][m] for k in both]), np.array([vb[k][m] for k in both]))
        rows.append({"metric": m, "A": a.short, "B": b.short, "images": len(both),
                     "A − B": {"mean": res["mean"], "ci_low": res.get("ci_low"), "ci_high": res.get("ci_high")},
                     "wilcoxon_p": res.get("wilcoxon_p")})
    return rows


def _comparison_html(sources: Sequence[Source]) -> str:
    """Eval results of one command side by side, only when their settings agree (metrics.md §0: never compare
    results computed differently; the differing keys are named instead), with paired per-image differences."""
    by_command: dict[str, list[Source]] = {}
    for src in sources:
        if src.kind == "eval":
            by_command.setdefault(str(src.results.get("command", "")), []).append(src)
    out = []
    for command, group in by_command.items():
        if len(group) < 2:
            continue
        first = _settings_of(group[0])
        same = [g for g in group if _settings_of(g) == first]
        for other in (g for g in group if _settings_of(g) != first):
            theirs = _settings_of(other)
            diff = sorted(k for k in set(first) | set(theirs) if first.get(k) != theirs.get(k))
            out.append(f'<p class="warn">{esc(other.label)} is not compared with {esc(group[0].label)}: settings '
                       f'differ in {esc(", ".join(diff))}</p>')
        if len(same) < 2:
            continue
        stats = {g.label: {p: v for p, v in collect_stats(g.results).items() if p.startswith("metrics.")}
                 for g in same}
        out.append(f"<h3>{esc(command)}</h3>" + comparison_table(stats))
        paired = [r for i, a in enumerate(same) for b in same[i + 1:] for r in _paired_rows(a, b)]
        if paired:
            out.append(records_table(paired, "Paired over the same images (A − B: mean [95 % paired bootstrap "
                                     "interval]; Wilcoxon signed-rank p)"))
    return "".join(out)


def panel_name(curve: str, command: str) -> str:
    """The figure panel of one curve kind of one eval command (sanity names already say what they are)."""
    return curve if curve.startswith("sim_") else f"{curve} ({command})"


def _dataset_curves(sources: Sequence[Source]) -> dict[str, dict[str, tuple[np.ndarray | None, np.ndarray]]]:
    """Panel → input label → (x, y): eval curves.npz, plus attrib recorded curves when their lengths agree.

    Panels are per command and curve name: protocol (a) (smdl, recorded scores) and (b) (faithfulness, re-run
    model) never share axes (metrics.md §1).
    """
    out: dict[str, dict[str, tuple[np.ndarray | None, np.ndarray]]] = {}
    for src in sources:
        command = str(src.results.get("command") or src.kind)
        for name, (x, y) in src.curves.items():
            out.setdefault(panel_name(name, command), {})[src.label] = (x, y)
        if src.kind == "attrib":
            per: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
            for it in src.items:
                for name, x, y in it.curves:
                    per.setdefault(name, []).append((x, y))
            for name, pairs in per.items():
                if len({len(y) for _, y in pairs}) == 1:
                    xs = np.stack([x for x, _ in pairs])
                    out.setdefault(f"recorded {name} (attrib)", {})[src.label] = (xs, np.stack([y for _, y in pairs]))
    return out


def render_html(sources: Sequence[Source], *, max_images: int = 200, thumb: int = 96, sort_by: str | None = None,
                title: str = "xaiclip report") -> tuple[str, dict[str, Any]]:
    """The report's HTML and what went into it (items, shown, metrics, sort metric, warnings)."""
    from xaiclip_cli import __version__

    items, metrics = merge_items(sources)
    if sort_by is not None and sort_by not in metrics:
        known = ", ".join(metrics[:12]) or "none"
        raise UsageError(f"--sort-by {sort_by!r}: no such per-image metric (have: {known})")
    sort_metric = sort_by or default_sort_metric(sources, metrics)
    ordered = order_items(items, sort_metric)
    shown, rest = ordered[:max_images], ordered[max_images:]
    counters = {"images": 0, "missing": 0}
    warnings = [w for s in sources for w in s.warnings]
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    comparison_html = _comparison_html(sources)
    parts = [f'<header><h1>{esc(title)}</h1><p>xaiclip {esc(__version__)} · {esc(now)} · {len(sources)} input(s): '
             + esc(", ".join(f"{s.label} ({s.kind})" for s in sources)) + "</p></header><main>"]
    parts.append('<section id="provenance"><h2>Provenance</h2>' + _provenance_summary(sources)
                 + '<details><summary>per input: versions, resolved configs</summary><div class="prov">'
                 + "".join(_provenance_html(s) for s in sources) + "</div></details></section>")
    results = "".join(_results_html(s) for s in sources if s.kind in ("eval", "store", "attrib", "cam"))
    if results:
        parts.append(f'<div id="results">{results}</div>')
    if comparison_html:
        parts.append(f'<section id="comparison"><h2>Method vs method</h2>{comparison_html}</section>')
    curves = _dataset_curves(sources)
    if len(curves) > MAX_PANELS:
        warnings.append(f"{len(curves) - MAX_PANELS} curve panel(s) not drawn (at most {MAX_PANELS}): "
                        + ", ".join(list(curves)[MAX_PANELS:]))
    if curves:
        bands: dict[str, dict[str, float]] = {}
        ticks: dict[str, list[str]] = {}
        for src in sources:
            command = str(src.results.get("command") or src.kind)
            for name, level in src.bands.items():
                bands.setdefault(panel_name(name, command), {})[src.label] = level
            for name, labels in src.ticks.items():
                ticks.setdefault(panel_name(name, command), labels)
        uri = curves_figure(curves, bands, ticks)
        if uri:
            counters["images"] += 1
            parts.append('<section id="curves"><h2>Mean curves (band: 95 % bootstrap interval of the mean)</h2>'
                         f'<img class="fig" src="{uri}" alt="mean curves"></section>')
    if ordered:
        options = "".join(
            f'<option value="{esc(m)}" data-worst="{"desc" if lower_is_better(m) else "asc"}"'
            f'{" selected" if m == sort_metric else ""}>{esc(m)}</option>' for m in metrics)
        direction = "desc" if sort_metric and lower_is_better(sort_metric) else "asc"
        controls = (f'<div id="controls">sort by <select id="sortby">{options}</select>'
                    f'<select id="sortdir"><option value="asc"{" selected" if direction == "asc" else ""}>'
                    f'ascending</option><option value="desc"{" selected" if direction == "desc" else ""}>'
                    "descending</option></select> (the worst explanations first on selecting a metric)</div>"
                    if metrics else "")
        cards = "".join(_card(it, thumb, counters, sort_metric) for it in shown)
        rest_html = ""
        if rest:
            names = "".join(
                f"<li>{esc(it.key)}" + (f" ({esc(fmt(it.metrics[sort_metric]))})"
                                        if sort_metric in it.metrics else "") + "</li>" for it in rest)
            rest_html = (f'<details id="rest"><summary>{len(rest)} more image(s) without pictures (over '
                         f'--max-images {max_images}), in the same order</summary><ol class="rest" '
                         f'start="{len(shown) + 1}">{names}</ol></details>')
        parts.append(f'<section id="gallery-section"><h2>Per image ({len(ordered)} images, {len(shown)} shown)</h2>'
                     f'{controls}<div id="gallery">{cards}</div>{rest_html}</section>')
    if counters["missing"]:
        warnings.append(f"{counters['missing']} picture(s) could not be read (moved or deleted files)")
    if warnings:
        parts.append('<section id="warnings"><h2>Warnings</h2><ul>'
                     + "".join(f'<li class="warn">{esc(w)}</li>' for w in warnings) + "</ul></section>")
    body = "".join(parts)
    links = [(i, t) for i, t in (("provenance", "provenance"), ("results", "results"), ("comparison", "method vs "
             "method"), ("curves", "curves"), ("gallery-section", "per image"), ("warnings", "warnings"))
             if f'id="{i}"' in body]
    parts.insert(1, "<nav>" + " · ".join(f'<a href="#{i}">{t}</a>' for i, t in links) + "</nav>")
    parts.append("</main>")
    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
           '<meta name="viewport" content="width=device-width, initial-scale=1">'
           f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
           + "".join(parts) + f"<script>{_JS}</script></body></html>\n")
    info = {"gallery_items": len(ordered), "gallery_shown": len(shown), "sort_by": sort_metric,
            "curve_panels": list(curves)[:MAX_PANELS],
            "metrics": metrics, "warnings": warnings, "pictures": counters["images"]}
    return doc, info


def build_report(runs: Sequence[Path], out: Path, *, max_images: int = 200, thumb: int = 96,
                 sort_by: str | None = None, overwrite: bool = False,
                 warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Read every input, render the report, write it atomically to ``out``; return what went in."""
    if not runs:
        raise UsageError("no inputs: give one or more store files or cam/attrib/eval output folders")
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; give a file name such as {out / 'report.html'}")
    if out.exists() and not overwrite:
        raise UsageError(f"--out {out} exists; pass --overwrite to replace it")
    datasets = DatasetCache()
    sources = [read_source(Path(p), datasets) for p in runs]
    seen: dict[str, int] = {}
    for s in sources:  # two folders with the same name keep distinct labels
        seen[s.label] = seen.get(s.label, 0) + 1
        if seen[s.label] > 1:
            s.short = f"{s.short} #{seen[s.label]}"
            s.label = f"{s.label} #{seen[s.label]}"
    doc, info = render_html(sources, max_images=max_images, thumb=thumb, sort_by=sort_by)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(doc, encoding="utf-8")
    os.replace(tmp, out)
    for w in info["warnings"]:
        if warn is not None:
            warn(w)
    return {"out": str(out), "bytes": out.stat().st_size,
            "inputs": [{"path": str(s.path), "kind": s.kind, "label": s.label, "items": len(s.items),
                        "curves": len(s.curves), "configs": list(s.configs)} for s in sources],
            "gallery_items": info["gallery_items"], "gallery_shown": info["gallery_shown"],
            "sort_by": info["sort_by"], "metrics": info["metrics"], "curve_panels": info["curve_panels"],
            "warnings": info["warnings"]}
