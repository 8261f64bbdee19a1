"""SMDL result files: the compact npz (smdl.md §8), the reference npy/json export, and the recorded-curve AUC.

The AUC follows metrics.md §1 (the reference ``evals/eval_AUC_faithfulness.py`` protocol) with
``sklearn.metrics.auc`` on the recorded curves: no model run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.explain.smdl.search import TERMS, SmdlResult

NPZ_CURVES = TERMS
JSON_TERMS = {"confidence": "confidence_score", "effectiveness": "effectiveness_score",
              "consistency": "consistency_score", "collaboration": "collaboration_score", "objective": "smdl_score"}


def save_npz(path: str | Path, labels: np.ndarray, result: SmdlResult) -> Path:
    """Write the compact result (compressed): labels int16, order int16, five float32 curves, p_full/p_black, areas."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        "labels": np.asarray(labels).astype(np.int16),
        "order": np.asarray(result.order).astype(np.int16),
        **{t: np.asarray(getattr(result, t), dtype=np.float32) for t in NPZ_CURVES},
        "p_full": np.float32(result.p_full),
        "p_black": np.float32(result.p_black),
        "area_ins": np.asarray(result.area_ins, dtype=np.float32),
        "area_del": np.asarray(result.area_del, dtype=np.float32),
    }
    if result.front_len is not None:
        arrays["front_len"] = np.int32(result.front_len)
        for key, val in result.extra.items():
            if key.endswith(("_increase", "_decrease")):
                arrays[key] = np.asarray(val, dtype=np.float32)
    if result.p_pred is not None:
        arrays["p_pred"] = np.asarray(result.p_pred, dtype=np.float32)
    tmp = p.with_name(p.name + ".partial.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, p)  # never a half-written npz under the final name
    return p


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read a compact result into a dict of arrays (one-line error for a missing or unreadable file)."""
    p = Path(path)
    if not p.is_file():
        raise XaiclipError(f"{p}: result not found")
    try:
        with np.load(p, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise XaiclipError(f"{p}: not a readable result npz ({e})") from None
    missing = [k for k in ("order", "consistency", "collaboration", "area_ins", "area_del") if k not in out]
    if missing:
        raise XaiclipError(f"{p}: result npz lacks {', '.join(missing)}")
    return out


def recorded_auc(npz: dict[str, Any]) -> tuple[float, float]:
    """(insertion, deletion) AUC of one image from its recorded curves (metrics.md §1, sklearn.metrics.auc).

    Insertion: x = area_ins, y = [1 − collaboration_k] + consistency. Deletion: x = area_del,
    y = [consistency_k] + (1 − collaboration).
    """
    from xaiclip_cli.metrics.insertion_deletion import smdl_auc

    cons = np.asarray(npz["consistency"], dtype=np.float64)
    colla = np.asarray(npz["collaboration"], dtype=np.float64)
    x_ins = np.asarray(npz["area_ins"], dtype=np.float64)
    x_del = np.asarray(npz["area_del"], dtype=np.float64)
    if "labels" in npz:
        # Areas are pixel counts over P stored as float32: snap them back to exact multiples of 1/P so the AUC
        # equals the reference evaluator's (which counts pixels of the region images) to 1e-12, not 1e-8.
        p = float(np.asarray(npz["labels"]).size)
        x_ins, x_del = np.round(x_ins * p) / p, np.round(x_del * p) / p
    k = len(cons)
    if k < 1 or len(colla) != k or len(x_ins) != k + 1 or len(x_del) != k + 1:
        raise UsageError(f"recorded curves have inconsistent lengths (k={k}, collaboration {len(colla)}, "
                         f"area_ins {len(x_ins)}, area_del {len(x_del)})")
    return smdl_auc(x_ins, cons, colla, x_del)


def lambda_dir(division: str, lambdas: tuple[float, ...], pending: int | None) -> str:
    """``<division>-<λ1>-<λ2>-<λ3>-<λ4>[-pending-samples-P]`` with λ as Python floats (slico-0.0-0.05-1.0-1.0)."""
    name = "-".join([division, *(str(float(v)) for v in lambdas)])
    return f"{name}-pending-samples-{int(pending)}" if pending is not None else name


def export_names(keys: Sequence[str]) -> dict[str, str]:
    """Flat file stems for one target's items in the reference tree (its evaluator lists one folder per target).

    The key's last part when no other key shares it (the reference's own naming), else the whole key with ``/`` →
    ``__`` (``a/x`` and ``b/x`` → ``a__x`` and ``b__x``); a clash still left after that is refused, never overwritten.
    """
    keys = list(dict.fromkeys(keys))
    base = [k.rsplit("/", 1)[-1] for k in keys]
    count: dict[str, int] = {}
    for b in base:
        count[b] = count.get(b, 0) + 1
    out = {k: (b if count[b] == 1 else k.replace("/", "__")) for k, b in zip(keys, base, strict=True)}
    seen: dict[str, str] = {}
    for k, v in out.items():
        if v in seen:
            raise UsageError(f"export: items {seen[v]!r} and {k!r} would both be written as {v}.npy; rename one")
        seen[v] = k
    return out


def export_names_by_target(items: Iterable[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """export_names() for (target folder, key) pairs of a whole plan: {target: {key: flat stem}}."""
    keys: dict[str, list[str]] = {}
    for target, key in items:
        keys.setdefault(target, []).append(key)
    return {t: export_names(k) for t, k in keys.items()}


def export_reference(out_dir: str | Path, division: str, lambdas: tuple[float, ...], pending: int | None,
                     target_name: str, stem: str, image_bgr: np.ndarray, labels: np.ndarray,
                     result: SmdlResult) -> tuple[Path, Path]:
    """Write the reference layout: npy/<target>/<stem>.npy (uint8 [k,S,S,3] BGR regions in order) + json twin."""
    root = Path(out_dir) / lambda_dir(division, lambdas, pending)
    img = np.asarray(image_bgr, dtype=np.uint8)
    lab = np.asarray(labels)
    if lab.shape != img.shape[:2]:
        raise UsageError(f"labels {lab.shape} and image {img.shape[:2]} differ in size")
    regions = np.stack([np.where((lab == int(i))[..., None], img, 0).astype(np.uint8) for i in result.order])
    npy = root / "npy" / target_name / f"{stem}.npy"
    js = root / "json" / target_name / f"{stem}.json"
    npy.parent.mkdir(parents=True, exist_ok=True)
    js.parent.mkdir(parents=True, exist_ok=True)
    np.save(npy, regions)
    obj = np.asarray(result.objective, dtype=np.float64)
    doc: dict[str, Any] = {"sub-k": int(len(result.order))}
    for t, key in JSON_TERMS.items():
        doc[key] = [float(v) for v in getattr(result, t)]
    for i, v in enumerate(lambdas, start=1):
        doc[f"lambda{i}"] = float(v)
    doc["smdl_score_max"] = float(obj.max())
    doc["smdl_score_max_index"] = int(obj.argmax())
    for key, val in result.extra.items():
        if key.endswith(("_increase", "_decrease")):
            term, side = key.rsplit("_", 1)
            doc[f"{JSON_TERMS[term]}_{side}"] = [float(v) for v in np.asarray(val)]
    js.write_text(json.dumps(doc))
    return npy, js
