"""Writers of every `xaiclip eval` result folder: ``eval.json``, ``per_image.csv``, ``curves.npz`` and the PNG.

Schema (stable; `eval report` reads it):

``eval.json`` — one JSON object:
    ``schema``      "xaiclip-eval/1"
    ``command``     smdl | faithfulness | mufidelity | drop | localization | sanity | zeroshot | probe
    ``settings``    every setting that changes a number (protocol, convention, score, target rule, baseline {kind,
                    space, value}, unit, steps, max_fraction, counts rule, x_axis, tie_break, auc_rule,
                    aggregation, seeds, bootstrap B and seed, ...). Two results are comparable iff their
                    ``settings`` are equal (`metrics.bootstrap.check_comparable`).
    ``model``       model id / revision / fingerprint when a model or store is involved (else {})
    ``versions``    library versions
    ``counts``      {"images": n planned, "evaluated": n, "skipped": {reason: n}}
    ``metrics``     {name: {mean, std, ci_low, ci_high, n, B, seed}} — dataset-level numbers, bootstrap 95 % intervals
    ``per_class``   {class name: {metric: {mean, ci_low, ci_high, n, ...}}} (may be {})
    ``breakdown``   {group: {value: {metric: {...}}}} e.g. {"mask_area": {"small": {...}}} (may be {})
    ``extra``       command-specific tables (zeroshot per template, confusion matrices, probe C and coefficients,
                    sanity verdicts and similarity curves, notes such as "AUC undefined: one class")
    ``files``       {"per_image": "per_image.csv", "curves": "curves.npz" | null, "plot": "curves.png" | null, ...}

``per_image.csv`` — one row per (image, target[, method]) with columns ``image`` (the map key), ``target``,
``label``, ``status`` (ok | skipped), ``reason`` (empty when ok: nan, bad_shape, empty_mask, missing_mask,
missing_image, incomplete, missing_json, unreadable, ...), then ``method`` and ``image_stem`` (the explained
image, used to pair methods) where known, then one column per per-image metric (empty when skipped or
undefined). Skipped rows are listed, never averaged.

``curves.npz`` — ``image`` (str [n], same order as the ok rows of per_image.csv) and per curve kind K:
``x_K`` float64 [n, s+1] and ``y_K`` float64 [n, s+1] (K = insertion | deletion; smdl: NaN-padded to the longest
curve since k varies). sanity: ``sim_<check>_<spearman|ssim>`` [n, steps+1] and ``steps_<check>`` (str, step 0 =
"trained"). ``curves.png`` (faithfulness, smdl) draws the mean curves with bootstrap bands; sanity writes
``sanity.png``.

Other files: ``progress.jsonl`` (mufidelity, drop: header {"settings"} then one record per image; the resume log;
faithfulness: one ``progress.<worker>.jsonl`` per worker, header {"settings", "model"}, plus ``failed.jsonl`` and,
across ranks, the collector lock ``.collect.lock``), ``concept_scores.npz``/``.csv`` (zeroshot with concept
templates: scores [N,K], ids, labels, split, concepts), ``compare.json`` (`eval compare`: the paired comparison,
same top-level keys as eval.json).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xaiclip_cli.errors import UsageError

SCHEMA = "xaiclip-eval/1"
RESULT_FILES = ("eval.json", "per_image.csv", "curves.npz", "curves.png")


def prepare_dir(out: str | Path, overwrite: bool, names: Sequence[str] = RESULT_FILES) -> Path:
    """Create the output folder; refuse (exit 2) when it already holds results and ``overwrite`` is off."""
    d = Path(out)
    existing = [n for n in names if (d / n).exists()]
    if existing and not overwrite:
        raise UsageError(f"{d / existing[0]} exists; pass --overwrite to replace the results in {d}")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    return str(v)


def eval_document(command: str, settings: Mapping[str, Any], counts: Mapping[str, Any],
                  metrics: Mapping[str, Any], *, model: Mapping[str, Any] | None = None,
                  per_class: Mapping[str, Any] | None = None, breakdown: Mapping[str, Any] | None = None,
                  extra: Mapping[str, Any] | None = None, files: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``eval.json`` object (schema in this module's docstring)."""
    from xaiclip_cli.versions import lib_versions

    return {
        "schema": SCHEMA, "command": command, "settings": dict(settings), "model": dict(model or {}),
        "versions": lib_versions(), "counts": dict(counts), "metrics": dict(metrics),
        "per_class": dict(per_class or {}), "breakdown": dict(breakdown or {}), "extra": dict(extra or {}),
        "files": dict(files or {}),
    }


def write_eval_json(out: Path, doc: Mapping[str, Any]) -> Path:
    """Write ``eval.json`` atomically."""
    p = Path(out) / "eval.json"
    _atomic_write(p, json.dumps(doc, indent=2, ensure_ascii=False, default=_jsonable, allow_nan=False))
    return p


def write_per_image(out: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``per_image.csv``: fixed leading columns, then every metric column in first-seen order."""
    lead = ["image", "target", "label", "status", "reason"]
    cols = list(lead)
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    p = Path(out) / "per_image.csv"
    tmp = p.with_name(f".{p.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else (f"{r[k]:.10g}" if isinstance(r.get(k), float)
                                                          else r.get(k))) for k in cols})
    os.replace(tmp, p)
    return p


def write_curves(out: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``curves.npz`` (uncompressed; float64 curves, str image ids)."""
    p = Path(out) / "curves.npz"
    tmp = p.with_name(".curves.tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
    os.replace(tmp, p)
    return p


def plot_mean_curves(out: Path, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str,
                     ylabel: str = "score", seed: int = 0, b: int = 200, name: str = "curves.png") -> Path:
    """PNG of each kind's mean curve over images with a bootstrap 95 % band; legend carries the mean AUC-free label.

    ``curves``: {label: (x [n, s+1], y [n, s+1])}; the x of the first image is drawn (all share the counts rule).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xaiclip_cli.metrics.bootstrap import resample_indices

    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
    for label, (x, y) in curves.items():
        y = np.asarray(y, dtype=np.float64)
        if y.size == 0:
            continue
        xs = np.asarray(x, dtype=np.float64)[0]
        mean = y.mean(axis=0)
        line, = ax.plot(xs, mean, label=f"{label} (n={y.shape[0]})")
        if y.shape[0] > 1:
            boot = y[resample_indices(y.shape[0], b, seed)].mean(axis=1)
            lo, hi = np.quantile(boot, [0.025, 0.975], axis=0)
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("fraction of features perturbed")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(out) / name
    fig.savefig(p)
    plt.close(fig)
    return p


def summarise(rows: Sequence[Mapping[str, Any]], metric_keys: Sequence[str], b: int, seed: int,
              group_key: str | None = None) -> dict[str, Any]:
    """Bootstrap summary of each metric over the ok rows (None values skipped and counted as ``n_undefined``);
    with ``group_key``, one summary per group value (resampling within the group)."""
    from xaiclip_cli.metrics.bootstrap import bootstrap_ci

    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    if group_key is not None:
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for r in ok:
            groups.setdefault(str(r.get(group_key)), []).append(r)
        return {g: summarise(rs, metric_keys, b, seed) for g, rs in sorted(groups.items())}
    out: dict[str, Any] = {}
    for k in metric_keys:
        vals = [r.get(k) for r in ok]
        good = np.array([v for v in vals if isinstance(v, (int, float, np.floating, np.integer)) and
                         not isinstance(v, bool) and np.isfinite(v)], dtype=np.float64)
        s = bootstrap_ci(good, b, seed)
        s["n_undefined"] = len(vals) - int(good.size)
        out[k] = s
    return out


def skipped_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """{reason: count} of the skipped rows."""
    out: dict[str, int] = {}
    for r in rows:
        if r.get("status") == "skipped":
            out[str(r.get("reason"))] = out.get(str(r.get("reason")), 0) + 1
    return out
