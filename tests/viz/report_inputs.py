"""Small real inputs for the report tests: a toy `cam run`, and eval/attrib folders in their documented schemas.

Real where a command exists (`cam run`, `eval localization|smdl|zeroshot`); `eval faithfulness` is written with
the eval writers (metrics.results) and seeded random curves; the attrib folder follows smdl.md §8 (compact npz +
sidecar, seeded random scores) because `attrib run` is not merged here yet.
"""

from __future__ import annotations

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


def run_eval(*args: str) -> dict[str, Any]:
    """Run a real `xaiclip eval ...` command in-process and return its eval.json."""
    from typer.testing import CliRunner

    from xaiclip_cli.cli.main import app

    r = CliRunner().invoke(app, ["eval", *args, "--quiet"])
    assert r.exit_code == 0, r.stderr
    out = Path(args[args.index("--output-dir") + 1])
    return json.loads((out / "eval.json").read_text(encoding="utf-8"))


def write_faithfulness_eval(out: Path, keys: list[str], seed: int = 0, method: str = "gradcam",
                            steps: int = 10) -> dict[str, Any]:
    """An `eval faithfulness`-shaped folder written with the eval writers (metrics.results): eval.json,
    per_image.csv and curves.npz (``x_K``/``y_K`` [n, steps+1], ``image``); curves are seeded random."""
    from xaiclip_cli.metrics import results as R

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = len(keys)
    x = np.tile(np.linspace(0.0, 1.0, steps + 1), (n, 1))
    rate = rng.uniform(2.0, 8.0, (n, 1))
    ins = 1.0 - np.exp(-rate * x) * rng.uniform(0.8, 1.0, (n, 1))
    dele = np.exp(-rate * x) * rng.uniform(0.8, 1.0, (n, 1))
    rows = [{"image": k, "target": CLASSES[i % len(CLASSES)], "label": i % len(CLASSES), "status": "ok",
             "reason": "", "method": method, "insertion_auc": float(np.trapezoid(ins[i], x[i])),
             "deletion_auc": float(np.trapezoid(dele[i], x[i]))} for i, k in enumerate(keys)]
    metric_keys = ["insertion_auc", "deletion_auc"]
    settings = {"protocol": "b", "convention": "xaiclip", "score": "softmax", "target": "sidecar",
                "baseline": {"kind": "black", "space": "pixel", "value": 0.0}, "unit": "input", "steps": steps,
                "max_fraction": 1.0, "tie_break": "stable_low_index", "bootstrap": 200, "bootstrap_seed": seed}
    doc = R.eval_document("faithfulness", settings, {"images": n, "evaluated": n, "skipped": {}},
                          R.summarise(rows, metric_keys, 200, seed),
                          model={"model_id": "toy-cnn", "sha256": "df92674b" * 8},
                          per_class=R.summarise(rows, metric_keys, 200, seed, group_key="target"),
                          files={"per_image": "per_image.csv", "curves": "curves.npz"})
    R.write_eval_json(out, doc)
    R.write_per_image(out, rows)
    R.write_curves(out, {"image": np.array(keys), "x_insertion": x, "y_insertion": ins, "x_deletion": x,
                         "y_deletion": dele})
    return doc


def write_attrib_run(out: Path, keys: list[str], images_dir: Path, seed: int = 2, grid: int = 4,
                     size: int = 64) -> Path:
    """An `attrib run`-shaped folder (smdl.md §8): run.json, items/<target>/<stem>.npz + .json sidecars."""
    rng = np.random.default_rng(seed)
    images_dir.mkdir(parents=True, exist_ok=True)
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
