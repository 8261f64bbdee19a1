"""Late fusion of per-patient features: mean-pool slices, concatenate modalities, scaler + L2 logistic regression."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from xaiclip_cli.errors import UsageError
from xaiclip_cli.train.metrics import classification_metrics
from xaiclip_cli.train.split import write_csv

SPLITS = ("train", "val", "test")


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _joined_rows(
    feature_dir: Path, split: str, modalities: list[str], use_aligned: bool
) -> list[dict[str, str]] | None:
    if use_aligned:
        p = feature_dir / split / "aligned" / "aligned.csv"
        return _read(p) if p.is_file() else None
    tables = {}
    for m in modalities:
        p = feature_dir / split / f"features_{m}.csv"
        if not p.is_file():
            return None
        tables[m] = {r["patient_id"]: r for r in _read(p)}
    ids = [pid for pid in tables[modalities[0]] if all(pid in tables[m] for m in modalities)]
    return [{"patient_id": pid, "label": tables[modalities[0]][pid]["label"],
             **{f"feature_path_{m}": tables[m][pid]["feature_path"] for m in modalities}} for pid in ids]


def patient_matrix(feature_dir: Path, split: str, modalities: list[str],
                   use_aligned: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """(X [patients, sum of dims], labels, patient ids) for one split: slice mean per modality, concatenated."""
    feature_dir = Path(feature_dir)
    rows = _joined_rows(feature_dir, split, modalities, use_aligned)
    if rows is None:
        return None
    xs, ys, ids = [], [], []
    for r in rows:
        parts = []
        for m in modalities:
            key = f"feature_path_{m}"
            if key not in r:
                raise UsageError(f"aligned.csv of {split} has no column {key}; re-run `train extract --align`")
            p = Path(r[key])
            arr = np.load(p if p.is_absolute() else feature_dir / p)
            parts.append(arr.reshape(arr.shape[0], -1).mean(0))
        xs.append(np.concatenate(parts))
        ys.append(int(r["label"]))
        ids.append(r["patient_id"])
    if not xs:
        return np.zeros((0, 0), np.float32), np.zeros(0, int), []
    return np.stack(xs).astype(np.float64), np.asarray(ys), ids


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int, random_state: int, standardize: bool) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # The scaler sits inside the pipeline, so it only ever sees the training rows.
    steps = [StandardScaler()] if standardize else []
    steps.append(LogisticRegression(C=c, max_iter=max_iter, random_state=random_state))
    return make_pipeline(*steps).fit(x, y)


def fuse(
    feature_dir: Path,
    modalities: list[str],
    output_dir: Path,
    c: float = 1.0,
    c_grid: list[float] | None = None,
    max_iter: int = 1000,
    random_state: int = 42,
    standardize: bool = True,
    use_aligned: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fit the fusion classifier on train, pick C on val (optional grid), write metrics, predictions and model."""
    import joblib

    output_dir = Path(output_dir)
    targets = [output_dir / n for n in ("fusion_metrics.csv", "predictions.csv", "model.joblib")]
    if not overwrite and any(t.exists() for t in targets):
        raise UsageError(f"{next(t for t in targets if t.exists())} exists; pass --overwrite to replace it")
    data = {s: patient_matrix(Path(feature_dir), s, modalities, use_aligned) for s in SPLITS}
    if data["train"] is None or len(data["train"][1]) == 0:
        what = "aligned/aligned.csv (run `train extract --align`)" if use_aligned else "feature CSVs"
        raise UsageError(f"no training patients in {feature_dir}/train: need {what}")
    x_tr, y_tr, _ = data["train"]
    if len(np.unique(y_tr)) < 2:
        raise UsageError("fusion needs at least two classes among the training patients")
    chosen, grid_scores = c, []
    if c_grid:
        if data["val"] is None or len(data["val"][1]) == 0:
            raise UsageError("--c-grid needs validation patients")
        best = -math.inf
        for cand in c_grid:
            m = _fit(x_tr, y_tr, cand, max_iter, random_state, standardize)
            auc = classification_metrics(data["val"][1], m.predict_proba(data["val"][0]))["auc"]
            grid_scores.append({"C": cand, "val_auc": auc})
            score = -math.inf if math.isnan(auc) else auc
            if score > best:  # ties keep the first (smaller, more regularised when sorted) C
                best, chosen = score, cand
    model = _fit(x_tr, y_tr, chosen, max_iter, random_state, standardize)
    metrics, preds = [], []
    classes = [int(k) for k in model.classes_]
    for s in SPLITS:
        if data[s] is None or len(data[s][1]) == 0:
            continue
        x, y, ids = data[s]
        prob = model.predict_proba(x)
        full = np.zeros((len(y), max(max(classes), int(y.max())) + 1))
        full[:, classes] = prob
        m = classification_metrics(y, full)
        metrics.append({"split": s, "n_patients": len(y), **m})
        for pid, lab, p in zip(ids, y, full, strict=True):
            preds.append({"split": s, "patient_id": pid, "label": int(lab),
                          **{f"prob_{k}": float(p[k]) for k in range(full.shape[1])}, "pred": int(p.argmax())})
    output_dir.mkdir(parents=True, exist_ok=True)
    write_csv(output_dir / "fusion_metrics.csv", metrics, list(metrics[0].keys()))
    write_csv(output_dir / "predictions.csv", preds, list(preds[0].keys()))
    tmp = output_dir / ".model.joblib.tmp"
    joblib.dump({"pipeline": model, "modalities": modalities, "C": chosen}, tmp)
    tmp.replace(output_dir / "model.joblib")
    return {"C": chosen, "c_grid": grid_scores, "metrics": metrics, "feature_dim": int(x_tr.shape[1]),
            "output_dir": str(output_dir)}
