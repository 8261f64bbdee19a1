"""`train fit --protocol medmnist` (the MedMNIST v2 recipe) and `--repeats N` (N seeds, mean and std of the runs)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xaiclip_cli.config.train import TrainSettings
from xaiclip_cli.errors import UsageError
from xaiclip_cli.train import rundir

# MedMNIST2D/train_and_eval_pytorch.py: Adam(lr=1e-3) without weight decay, batch 128, 100 epochs, MultiStepLR
# (x0.1 at 50 and 75), no augmentation, Normalize(0.5, 0.5), grey sets as RGB, no pretraining.
MEDMNIST_PROTOCOL: dict[str, dict[str, Any]] = {
    "model": {"name": "resnet18", "pretrained": "false"},
    "data": {"in_chans": 3},
    "training": {"loss_type": "ce", "optimizer": "adam", "learning_rate": 1e-3, "weight_decay": 0.0,
                 "batch_size": 128, "epochs": 100, "scheduler": "multistep", "decay_milestones": [50, 75],
                 "decay_rate": 0.1, "warmup_epochs": 0, "early_stop_enabled": False, "select_metric": "val_auc",
                 "label_smoothing": 0.0, "model_ema": False},
    "augmentation": {"hflip": 0.0, "rotation": 0.0, "mean": [0.5], "std": [0.5], "interpolation": "nearest"},
    "experiment": {"repeats": 3},
}
SUMMARY_KEYS = ("auc", "acc", "patient_auc")


def apply_protocol(s: TrainSettings) -> tuple[TrainSettings, list[str]]:
    """Settings with the protocol's values for every field not given explicitly; also the fields the user kept."""
    if s.experiment.protocol == "none":
        return s, []
    if s.data.source == "splits":
        raise UsageError("--protocol medmnist needs --data medmnist:<flag> (or another npz/toycells source)")
    out = s.model_copy(deep=True)
    kept: list[str] = []
    for section, values in MEDMNIST_PROTOCOL.items():
        sec = getattr(out, section)
        for key, value in values.items():
            if key in sec.model_fields_set:
                kept.append(f"{section}.{key}")
            else:
                setattr(sec, key, value)
    # "(28)": the native MedMNIST size with a CIFAR-style ResNet; "(224)": a standard ResNet on upsampled images.
    if "image_size" not in s.data.model_fields_set:
        out.data.image_size = native_size(s)
    if "cifar_stem" not in s.model.model_fields_set:
        out.model.cifar_stem = out.data.image_size < 64
    return out, kept


def native_size(s: TrainSettings) -> int:
    """Image side of the data source (npz header; MedMNIST: --size or 28 when the file cannot be opened yet)."""
    from xaiclip_cli.train.data import _call_open_source

    try:
        side = getattr(_call_open_source(s.data.source, s.data.size, s.data.data_root), "image_size", None)
    except UsageError:
        side = None
    return int(side or s.data.size or (28 if s.data.source.startswith("medmnist:") else s.data.image_size))


def _run_name(s: TrainSettings) -> str:
    tag = s.data.modality if s.data.source == "splits" else s.data.source.replace("medmnist:", "")
    return s.experiment.name or rundir.default_run_name(s.model.name, tag or "data", s.training.learning_rate,
                                                        s.training.batch_size)


def _summary_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for k, r in enumerate(results, 1):
        test = r.get("test_metrics") or {}
        rows.append({"repeat": k, "seed": r["seed"], "run_dir": r["run_dir"], "best_epoch": r["best_epoch"],
                     "best_val": r["best_val"], **{f"test_{key}": test.get(key, math.nan) for key in SUMMARY_KEYS}})
    for stat, fn in (("mean", np.nanmean), ("std", np.nanstd)):
        row: dict[str, Any] = {"repeat": stat}
        for key in ("best_val", *[f"test_{k}" for k in SUMMARY_KEYS]):
            vals = np.asarray([math.nan if x[key] is None else float(x[key]) for x in rows[:len(results)]], float)
            row[key] = float(fn(vals)) if np.isfinite(vals).any() else math.nan
        rows.append(row)
    return rows


def run_repeats(
    s: TrainSettings,
    run_fit: Callable[..., dict[str, Any]],
    warn: Callable[[str], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Train ``experiment.repeats`` runs under ``<output-dir>/<name>/rep<k>`` (seed + k - 1); write repeats.csv/json.

    A repeat with results.json is skipped and one with checkpoints/last.pt resumed, so re-running the same command
    (same --name) completes an interrupted set.
    """
    if s.experiment.resume is not None:
        raise UsageError("--resume does not combine with --repeats; re-run the same command (same --name) instead")
    parent = Path(s.experiment.output_dir) / _run_name(s)
    results = []
    for k in range(1, s.experiment.repeats + 1):
        rs = s.model_copy(deep=True)
        rs.experiment.output_dir, rs.experiment.name = parent, f"rep{k}"
        rs.experiment.seed, rs.experiment.repeats = s.experiment.seed + k - 1, 1
        run_dir = parent / f"rep{k}"
        if (run_dir / "results.json").is_file():
            res = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        else:
            if (run_dir / "checkpoints" / "last.pt").is_file():
                rs.experiment.resume = run_dir
            res = run_fit(rs, warn=warn, on_epoch=on_epoch)
        results.append({**res, "seed": rs.experiment.seed})
    rows = _summary_rows(results)
    if write:
        rundir.write_rows(parent / "repeats.csv", rows)
        clean = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows]
        summary = {"run_dir": str(parent), "protocol": s.experiment.protocol, "repeats": clean}
        tmp = parent / ".repeats.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
        tmp.replace(parent / "repeats.json")
    return {"run_dir": str(parent), "results": results, "rows": rows}
