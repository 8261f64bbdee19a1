"""Summary of a `train fit` run directory: per-epoch metrics, best epoch, test metrics, curve PNGs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from xaiclip_cli.errors import UsageError
from xaiclip_cli.train.rundir import read_rows


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss and AUC per epoch (train and val) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "auc"), strict=True):
        for split in ("train", "val"):
            col = f"{split}_{key}"
            if any(col in r for r in history):
                ax.plot(epochs, [r.get(col, math.nan) for r in history], marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def summarize_run(run_dir: Path, plots: bool = True) -> dict[str, Any]:
    """Read metrics.csv, test_metrics.csv and results.json of a run; optionally write curves.png."""
    run_dir = Path(run_dir)
    history = read_rows(run_dir / "metrics.csv")
    if not history:
        raise UsageError(f"{run_dir}/metrics.csv not found or empty; is {run_dir} a `train fit` run directory?")
    results: dict[str, Any] = {}
    if (run_dir / "results.json").is_file():
        results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    keep = ("epoch", "lr", "train_loss", "train_auc", "val_loss", "val_auc", "val_acc", "val_patient_auc")
    epochs = [{k: _clean(r[k]) for k in keep if k in r} for r in history]
    test = [{k: _clean(v) for k, v in r.items()} for r in read_rows(run_dir / "test_metrics.csv")]
    written = [str(plot_curves(history, run_dir / "curves.png"))] if plots else []
    return {"run_dir": str(run_dir), "best_epoch": results.get("best_epoch"), "best_val": results.get("best_val"),
            "epochs": epochs, "test": test, "plots": written}
