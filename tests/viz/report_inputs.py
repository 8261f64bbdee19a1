"""Small real inputs for the report tests: a toy `cam run`, and eval/attrib folders in their documented schemas.

The eval folders follow the eval branch's bootstrap records ({mean, std, ci_low, ci_high, n, B, seed}; paired
comparisons add wilcoxon_p); the attrib folder follows smdl.md §8 (compact npz + sidecar). Values are seeded random.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["lymphocyte", "neutrophil", "eosinophil", "basophil", "monocyte"]


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m xaiclip_cli ARGS`` in a subprocess with this checkout first on the path."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", **(env or {})}
    return subprocess.run([sys.executable, "-m", "xaiclip_cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=600, check=False)


def make_cam_run(out: Path, n: int = 3, method: str = "gradcam") -> Path:
    """A real `cam run` on ``n`` toy cells with the shipped toy CNN (maps, overlays, sidecars, manifest)."""
    from typer.testing import CliRunner

    from xaiclip_cli.cli.main import app

    r = CliRunner().invoke(app, ["cam", "run", "--dataset", "toycells", "--limit", str(n), "--model", "toy-cnn",
                                 "--cpu", "--method", method, "--output-dir", str(out), "--threads", "1", "--quiet"])
    assert r.exit_code == 0, r.stderr
    return out


def stat(values: np.ndarray, seed: int = 0, b: int = 200) -> dict[str, Any]:
    """A bootstrap record as the eval writers produce it (percentile interval of the mean)."""
    v = np.asarray(values, dtype=np.float64)
    means = v[np.random.default_rng(seed).integers(0, v.size, (b, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)), "ci_low": float(lo), "ci_high": float(hi),
            "n": int(v.size), "B": b, "seed": seed}


def write_faithfulness_eval(out: Path, keys: list[str], seed: int = 0, method: str = "gradcam",
                            steps: int = 10) -> dict[str, Any]:
    """An `eval faithfulness`-shaped folder: eval.json, per_image.csv, curves.npz ([N, steps+1] per curve)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = len(keys)
    x = np.linspace(0.0, 1.0, steps + 1)
    rate = rng.uniform(2.0, 8.0, (n, 1))
    ins = 1.0 - np.exp(-rate * x[None, :]) * rng.uniform(0.8, 1.0, (n, 1))
    dele = np.exp(-rate * x[None, :]) * rng.uniform(0.8, 1.0, (n, 1))
    ins_auc = np.trapezoid(ins, x, axis=1)
    del_auc = np.trapezoid(dele, x, axis=1)
    labels = [CLASSES[i % len(CLASSES)] for i in range(n)]
    per_class = {}
    for c in sorted(set(labels)):
        idx = np.array([lab == c for lab in labels])
        if idx.sum() >= 2:
            per_class[c] = {"insertion_auc": stat(ins_auc[idx], seed), "deletion_auc": stat(del_auc[idx], seed)}
    doc = {
        "command": "faithfulness",
        "method": method,
        "protocol": "b",
        "settings": {"convention": "xaiclip", "score": "softmax", "target": "best", "baseline": {"kind": "black",
                     "space": "pixel", "value": 0.0}, "unit": "input", "steps": steps, "max_fraction": 1.0,
                     "tie_break": "stable_low_index", "auc": "trapezoid_actual_fraction", "seed": seed},
        "images": n,
        "skipped": {"nan_map": 0, "missing_map": 0},
        "metrics": {"insertion_auc": stat(ins_auc, seed), "deletion_auc": stat(del_auc, seed)},
        "per_class": per_class,
        "versions": {"xaiclip": "0.1.0", "numpy": np.__version__},
        "model": {"model_id": "toy-cnn", "sha256": "df92674b" * 8},
    }
    (out / "eval.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    with open(out / "per_image.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "target", "insertion_auc", "deletion_auc"])
        for k, lab, a, d in zip(keys, labels, ins_auc, del_auc, strict=True):
            w.writerow([k, lab, repr(float(a)), repr(float(d))])
    np.savez(out / "curves.npz", x=x, insertion=ins, deletion=dele, images=np.array(keys))
    return doc


def write_zeroshot_eval(out: Path, seed: int = 1) -> dict[str, Any]:
    """An `eval zeroshot`-shaped folder: per-split metrics, a confusion matrix, top concepts per class."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cm = rng.integers(0, 20, (len(CLASSES), len(CLASSES))) + np.eye(len(CLASSES), dtype=int) * 40
    doc = {
        "command": "zeroshot",
        "store": "toycells.h5",
        "splits": {"test": {"ensemble": {
            "accuracy": stat(rng.uniform(0.6, 0.9, 50), seed), "balanced_accuracy": stat(rng.uniform(0.5, 0.9, 50)),
            "auc_macro_ovr": stat(rng.uniform(0.7, 1.0, 50)),
            "labels": CLASSES, "confusion_matrix": cm.tolist()}}},
        "top_concepts": {c: [f"concept {c} {i}" for i in range(3)] for c in CLASSES},
    }
    (out / "eval.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return doc


def write_attrib_run(out: Path, keys: list[str], images_dir: Path, seed: int = 2, grid: int = 4) -> Path:
    """An `attrib run`-shaped folder (smdl.md §8): run.json, items/<target>/<stem>.npz + .json sidecars."""
    rng = np.random.default_rng(seed)
    images_dir.mkdir(parents=True, exist_ok=True)
    size = 64
    cell = size // grid
    labels = (np.arange(size)[:, None] // cell) * grid + (np.arange(size)[None, :] // cell)
    k = grid * grid
    (out / "items").mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({
        "config": {"model": "toy-cnn", "sha256": "df92674b" * 8, "division": "grid", "lambdas": [0.0, 0.05, 1, 1],
                   "search": "exact", "k": k},
        "versions": {"xaiclip": "0.1.0"}, "plan": {"items": len(keys)}}, indent=2), encoding="utf-8")
    for i, key in enumerate(keys):
        target = CLASSES[i % len(CLASSES)]
        img = (rng.uniform(0, 255, (size, size, 3))).astype(np.uint8)
        img_path = images_dir / f"{key}.png"
        Image.fromarray(img).save(img_path)
        cons = np.sort(rng.uniform(0, 1, k)).astype(np.float32)
        colla = np.sort(rng.uniform(0, 1, k)).astype(np.float32)
        area = np.linspace(0, 1, k + 1).astype(np.float32)
        d = out / "items" / target
        d.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(d / f"{key}.npz", labels=labels.astype(np.int16),
                            order=rng.permutation(k).astype(np.int16), consistency=cons, collaboration=colla,
                            confidence=cons, effectiveness=cons, objective=cons, p_full=np.float32(0.9),
                            p_black=np.float32(0.1), area_ins=area, area_del=area)
        (d / f"{key}.json").write_text(json.dumps({"path": str(img_path), "target": target, "prediction": target,
                                                    "forwards": 100, "seconds": 0.5}), encoding="utf-8")
        (d / f"{key}.done").write_text("")
    return out


def numeric_leaves(value: Any, prefix: str = "") -> list[tuple[str, float]]:
    """Every number in a JSON tree with its path (bools excluded)."""
    out: list[tuple[str, float]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            out += numeric_leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += numeric_leaves(v, f"{prefix}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out.append((prefix, float(value)))
    return out
