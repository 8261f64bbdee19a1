"""Classification metrics per epoch: AUC (MedMNIST conventions), accuracy, sensitivity, specificity, patient AUC."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np


def auc_score(y: np.ndarray, prob: np.ndarray, multi_label: bool = False) -> float:
    """AUC: positive class (binary), mean one-vs-rest (multi-class), mean per label (multi-label); NaN if undefined."""
    import sklearn
    from sklearn.metrics import roc_auc_score

    # Inputs are built here, already valid: skipping sklearn's per-call validation makes epoch metrics ~5x cheaper.
    with sklearn.config_context(skip_parameter_validation=True):
        return _auc(y, prob, multi_label, roc_auc_score)


def _auc(y: np.ndarray, prob: np.ndarray, multi_label: bool, roc_auc_score: Any) -> float:
    try:
        if multi_label:
            aucs = [roc_auc_score(y[:, k], prob[:, k]) for k in range(y.shape[1]) if len(np.unique(y[:, k])) == 2]
            return float(np.mean(aucs)) if aucs else math.nan
        if len(np.unique(y)) < 2:
            return math.nan
        if prob.shape[1] == 2:
            return float(roc_auc_score(y, prob[:, 1]))
        present = np.unique(y)
        # Mean of per-class one-vs-rest AUCs over the classes present (MedMNIST evaluator); one sklearn call
        # (macro one-vs-rest) when every class is present, as it is the same mean with less per-call overhead.
        if len(present) == prob.shape[1]:
            return float(roc_auc_score(y, prob, multi_class="ovr", average="macro"))
        return float(np.mean([roc_auc_score((y == k).astype(int), prob[:, k]) for k in present]))
    except ValueError:
        return math.nan


def classification_metrics(y: np.ndarray, prob: np.ndarray, multi_label: bool = False) -> dict[str, float]:
    """AUC, accuracy, sensitivity and specificity (macro over classes when more than two)."""
    out = {"auc": auc_score(y, prob, multi_label)}
    if len(y) == 0:
        return {"auc": math.nan, "acc": math.nan, "sensitivity": math.nan, "specificity": math.nan}
    if multi_label:
        pred = (prob > 0.5).astype(int)
        out["acc"] = float((pred == y).mean())
        tp, fn = ((pred == 1) & (y == 1)).sum(), ((pred == 0) & (y == 1)).sum()
        tn, fp = ((pred == 0) & (y == 0)).sum(), ((pred == 1) & (y == 0)).sum()
        out["sensitivity"] = float(tp / (tp + fn)) if tp + fn else math.nan
        out["specificity"] = float(tn / (tn + fp)) if tn + fp else math.nan
        return out
    pred = prob.argmax(1)
    out["acc"] = float((pred == y).mean())
    classes = [1] if prob.shape[1] == 2 else list(range(prob.shape[1]))
    sens, spec = [], []
    for k in classes:
        pos, neg = y == k, y != k
        if pos.any():
            sens.append(float((pred[pos] == k).mean()))
        if neg.any():
            spec.append(float((pred[neg] != k).mean()))
    out["sensitivity"] = float(np.mean(sens)) if sens else math.nan
    out["specificity"] = float(np.mean(spec)) if spec else math.nan
    return out


def patient_level(y: np.ndarray, prob: np.ndarray, patient_ids: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Mean slice probability per patient (patients in first-seen order) with each patient's label."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, pid in enumerate(patient_ids):
        groups[pid].append(i)
    ids = list(groups)
    p = np.stack([prob[groups[pid]].mean(0) for pid in ids]) if ids else prob[:0]
    labels = np.stack([y[groups[pid][0]] for pid in ids]) if ids else y[:0]
    return labels, p, ids


def split_metrics(
    y: np.ndarray, prob: np.ndarray, patient_ids: list[str], multi_label: bool = False
) -> dict[str, float]:
    """Slice metrics plus patient-level AUC and accuracy."""
    out = classification_metrics(y, prob, multi_label)
    if len(set(patient_ids)) == len(patient_ids):  # one image per patient (MedMNIST): same numbers
        out["patient_auc"], out["patient_acc"] = out["auc"], out["acc"]
        return out
    py, pp, _ = patient_level(y, prob, patient_ids)
    pm = classification_metrics(py, pp, multi_label)
    out["patient_auc"] = pm["auc"]
    out["patient_acc"] = pm["acc"]
    return out
