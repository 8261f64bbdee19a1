"""Zero-shot classification and concept scores from a feature library, no model run (metrics.md §10).

Reads split rows of the image CLS column and the template groups with the store's reader (tokens are never read);
metrics come from scikit-learn (accuracy, balanced accuracy, ROC AUC, confusion matrix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xaiclip_cli.errors import UsageError


@dataclass
class Library:
    """What eval reads of a store: per-split features/labels/ids, text prototypes per group, scalars, identity."""

    path: Path
    features: dict[str, np.ndarray]  # split -> [n, D] float32 (unit rows as stored)
    labels: dict[str, np.ndarray]
    ids: dict[str, np.ndarray]
    label_groups: dict[str, np.ndarray]  # template group -> [C, D]
    concept_groups: dict[str, np.ndarray]  # template group -> [K, D]
    class_names: list[str]
    concept_names: list[str]
    logit_scale: float  # exponentiated
    logit_bias: float
    concept_logit_scale: float | None
    concept_logit_bias: float | None
    model: dict[str, Any] = field(default_factory=dict)


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def load_library(path: str | Path, splits: tuple[str, ...] = ("train", "val", "test"), need_labels: bool = True,
                 expect_model: str | None = None) -> Library:
    """Open a store and read what zero-shot and probes need; one-line errors for unusable stores."""
    import json

    from xaiclip_cli.store import layout as L
    from xaiclip_cli.store.reader import StoreReader, plain

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"store not found: {p}")
    with StoreReader(p) as r:
        attrs = r.file.attrs
        model = {k: str(plain(attrs[k])) for k in ("model_id", "model_revision", "model_fingerprint")
                 if k in attrs}
        if expect_model is not None and model.get("model_id") != expect_model:
            raise UsageError(f"store {p} was written by model {model.get('model_id')!r}, not {expect_model!r}")
        label_names = r.template_names("label")
        if need_labels and not label_names:
            raise UsageError(f"store {p} has no label templates (run 'xaiclip store text' with a prompt set that "
                             "has labels and label templates)")
        mfp = model.get("model_fingerprint")
        groups: dict[str, dict[str, np.ndarray]] = {"label": {}, "concept": {}}
        for kind in ("label", "concept"):
            for n in r.template_names(kind):
                g = r.file[L.TEMPLATES][n]
                if mfp and "fingerprint" in g.attrs and "max_length" in g.attrs:
                    want = L.fingerprint_of({"model": mfp, "max_length": int(plain(g.attrs["max_length"])),
                                             "tokens": L.TEXT_TOKENS in g})
                    if str(plain(g.attrs["fingerprint"])) != want:
                        raise UsageError(f"store {p}: template group {n} was written by another model than the "
                                         "image features; rewrite it with 'xaiclip store text'")
                groups[kind][n] = np.asarray(g[L.TEXT_FEATURES][()], dtype=np.float64)

        def names(key: str, k: int, prefix: str) -> list[str]:
            raw = attrs.get(key)
            try:
                lst = [str(x) for x in json.loads(str(plain(raw)))] if raw is not None else []
            except ValueError:
                lst = []
            return lst if len(lst) == k else [f"{prefix}{i}" for i in range(k)]

        c = next(iter(groups["label"].values())).shape[0] if groups["label"] else 0
        kc = next(iter(groups["concept"].values())).shape[0] if groups["concept"] else 0
        feats, labels, ids = {}, {}, {}
        for s in splits:
            rows = r.split_rows(s)
            feats[s] = r.read(L.IMAGE_FEATURES, rows) if rows.size else np.zeros((0, 0), np.float32)
            labels[s] = r.column(L.LABELS)[rows].astype(np.int64)
            ids[s] = r.column(L.IDS)[rows].astype(np.int64)
        scale = _finite(plain(attrs.get("logit_scale_exp", float("nan"))))
        if scale is None:
            raw = _finite(plain(attrs.get("logit_scale", float("nan"))))
            scale = math.exp(raw) if raw is not None else 1.0
        cscale = _finite(plain(attrs.get("concept_logit_scale_exp", float("nan"))))
        return Library(
            path=p, features=feats, labels=labels, ids=ids, label_groups=groups["label"],
            concept_groups=groups["concept"], class_names=names("label_texts", c, "class"),
            concept_names=names("concept_texts", kc, "concept"), logit_scale=float(scale),
            logit_bias=_finite(plain(attrs.get("logit_bias", float("nan")))) or 0.0,
            concept_logit_scale=cscale, concept_logit_bias=_finite(plain(attrs.get("concept_logit_bias", None))),
            model={**model, "family": "sigmoid" if _finite(plain(attrs.get("logit_bias", float("nan")))) is not None
                   else "softmax"},
        )


def unit(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64)."""
    a = np.asarray(a, dtype=np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def ensemble(groups: dict[str, np.ndarray]) -> np.ndarray:
    """CLIP prompt ensembling: mean over templates of the unit features, renormalised."""
    return unit(np.mean([unit(g) for g in groups.values()], axis=0))


def logits(features: np.ndarray, prototypes: np.ndarray, scale: float, bias: float = 0.0,
           normalised: bool = False) -> np.ndarray:
    """s·(f̂ T̂ᵀ) + b (``normalised``: the feature rows are already unit, skip that pass)."""
    f = features if normalised else unit(features)
    return scale * (f @ unit(prototypes).T) + bias


def probabilities(lg: np.ndarray, family: str) -> np.ndarray:
    """Softmax over classes (softmax family) or elementwise sigmoid (sigmoid family)."""
    if family == "sigmoid":
        return 1.0 / (1.0 + np.exp(-lg))
    z = lg - lg.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classification_metrics(y: np.ndarray, prob: np.ndarray, n_classes: int) -> dict[str, Any]:
    """accuracy, balanced accuracy, AUC (binary: of class 1; else macro one-vs-rest), confusion matrix.

    AUC is None with a ``auc_note`` when fewer than two classes occur (undefined)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, roc_auc_score

    y = np.asarray(y, dtype=np.int64)
    pred = prob.argmax(axis=1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true": expected here
        bal = float(balanced_accuracy_score(y, pred)) if y.size else None
    out: dict[str, Any] = {
        "n": int(y.size),
        "accuracy": float(accuracy_score(y, pred)) if y.size else None,
        "balanced_accuracy": bal,
        "confusion_matrix": confusion_matrix(y, pred, labels=list(range(n_classes))).tolist() if y.size else [],
        "auc": None,
    }
    present = np.unique(y)
    if present.size < 2:
        out["auc_note"] = f"AUC undefined: the split holds {present.size} class(es)"
        return out
    if n_classes == 2:
        out["auc"] = float(roc_auc_score(y, prob[:, 1]))
    elif present.size == n_classes and np.allclose(prob.sum(axis=1), 1.0):
        out["auc"] = float(roc_auc_score(y, prob, multi_class="ovr", average="macro", labels=list(range(n_classes))))
    else:
        # Same one-vs-rest macro definition over the classes present (sklearn's multiclass call needs all
        # classes and rows that sum to 1, which sigmoid scores do not).
        out["auc"] = float(np.mean([roc_auc_score(y == c, prob[:, c]) for c in present]))
        out["auc_note"] = f"macro one-vs-rest AUC over the {present.size} classes present"
    return out


def zeroshot(lib: Library, splits: tuple[str, ...], family: str | None = None) -> dict[str, Any]:
    """Per split: metrics of every label template group and of the ensemble; plus per-image ensemble rows."""
    fam = family or lib.model.get("family", "softmax")
    c = len(lib.class_names)
    protos = {**lib.label_groups, "ensemble": ensemble(lib.label_groups)}
    out: dict[str, Any] = {"family": fam, "splits": {}}
    for s in splits:
        y = lib.labels[s]
        if y.size == 0:
            out["splits"][s] = {"note": f"split {s} has no written rows"}
            continue
        if np.any(y < 0) or np.any(y >= c):
            raise UsageError(f"split {s}: labels outside 0..{c - 1} (multi-label or unlabelled rows)")
        x = unit(lib.features[s])  # once per split, not once per template
        per = {}
        for name, t in protos.items():
            lg = logits(x, t, lib.logit_scale, lib.logit_bias, normalised=True)
            per[name] = classification_metrics(y, probabilities(lg, fam), c)
        out["splits"][s] = per
    return out


def concept_scores(lib: Library, split: str) -> np.ndarray:
    """[N, K] concept logits of a split: ensemble of the concept groups, concept scale/bias when the model has them."""
    if not lib.concept_groups:
        raise UsageError(f"store {lib.path} has no concept templates")
    scale = lib.concept_logit_scale if lib.concept_logit_scale is not None else lib.logit_scale
    bias = lib.concept_logit_bias if lib.concept_logit_scale is not None else lib.logit_bias
    return logits(lib.features[split], ensemble(lib.concept_groups), scale, bias or 0.0)


def concept_summary(scores: np.ndarray, labels: np.ndarray, class_names: list[str], concept_names: list[str],
                    top: int = 5) -> dict[str, Any]:
    """Per class: mean score of each concept, and the top concepts by mean z-score (z over all images)."""
    mu, sd = scores.mean(axis=0), scores.std(axis=0)
    z = (scores - mu) / np.where(sd > 0, sd, 1.0)
    out: dict[str, Any] = {}
    for ci, cname in enumerate(class_names):
        sel = labels == ci
        if not sel.any():
            continue
        mz = z[sel].mean(axis=0)
        order = np.argsort(-mz, kind="stable")[:top]
        out[cname] = {"n": int(sel.sum()), "mean_score": dict(zip(concept_names, scores[sel].mean(axis=0).tolist(),
                                                                     strict=True)),
                      "top_concepts": [{"concept": concept_names[k], "mean_z": float(mz[k])} for k in order]}
    return out


def _weighted_auc(w: np.ndarray, pos: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of each row of resampling weights w [B,n] (ties count half): [B]."""
    order = np.argsort(score, kind="stable")
    s = score[order]
    ws = w[:, order]
    ps = pos[order]
    wp = ws * ps[None]
    wn = ws - wp
    if np.any(s[1:] == s[:-1]):  # ties: pool the weights of equal scores
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        wp, wn = np.add.reduceat(wp, starts, axis=1), np.add.reduceat(wn, starts, axis=1)
    below = np.cumsum(wn, axis=1, dtype=np.float64) - wn
    num = (wp * (below + 0.5 * wn)).sum(axis=1, dtype=np.float64)
    den = wp.sum(axis=1, dtype=np.float64) * wn.sum(axis=1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def resample_weights(idx: np.ndarray, n: int) -> np.ndarray:
    """Counts [b, n] of each image in each resample (float32: small integers, exact)."""
    b = idx.shape[0]
    flat = (np.arange(b, dtype=np.int64)[:, None] * n + idx).reshape(-1)
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float32)


def bootstrap_classification(y: np.ndarray, prob: np.ndarray, n_classes: int, b: int = 1000, seed: int = 0,
                             chunk: int = 100) -> dict[str, dict[str, Any]]:
    """Percentile 95 % intervals of accuracy, balanced accuracy and (macro one-vs-rest) AUC over resampled images
    (numpy PCG64, seeded; resampling as weights so every metric is vectorised over the B resamples)."""
    from xaiclip_cli.metrics.bootstrap import bootstrap_ci, resample_indices

    y = np.asarray(y, dtype=np.int64)
    n = y.size
    pred = prob.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    out: dict[str, dict[str, Any]] = {"accuracy": bootstrap_ci(correct, b, seed)}
    if n < 2 or b == 0:
        return out
    idx = resample_indices(n, b, seed)
    present = np.unique(y)
    bal, aucs = [], []
    classes = [1] if n_classes == 2 else list(present)
    for s0 in range(0, b, chunk):
        w = resample_weights(idx[s0:s0 + chunk], n)
        onehot = (y[:, None] == present[None]).astype(np.float32)  # [n, C]
        tot = (w @ onehot).astype(np.float64)
        hit = (w @ (onehot * correct[:, None].astype(np.float32))).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            rec = np.where(tot > 0, hit / tot, np.nan)
        bal.append(np.nanmean(rec, axis=1))
        if present.size >= 2:
            aucs.append(np.nanmean(np.vstack([_weighted_auc(w, y == c, prob[:, c].astype(np.float64))
                                              for c in classes]), axis=0))

    def ci(vals: list[np.ndarray], point: float | None) -> dict[str, Any]:
        v = np.concatenate(vals) if vals else np.array([])
        v = v[np.isfinite(v)]
        lo, hi = (np.quantile(v, [0.025, 0.975]).tolist() if v.size else (None, None))
        return {"mean": point, "ci_low": lo, "ci_high": hi, "n": int(n), "B": b, "seed": seed}

    m = classification_metrics(y, prob, n_classes)
    out["balanced_accuracy"] = ci(bal, m["balanced_accuracy"])
    out["auc"] = ci(aucs, m["auc"]) if m["auc"] is not None else {"mean": None, "note": m.get("auc_note")}
    return out
