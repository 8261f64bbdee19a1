"""Linear probes on stored features (CLIP paper protocol, metrics.md §10): scikit-learn LogisticRegression.

C is chosen on the validation split from a coarse log grid 1e-4..1e4 (9 points) plus a refinement around the best
point (4 points at ±10^0.25, ±10^0.5); features are standardised on train only; the model fitted on train at the
chosen C is the one reported on test (no refit on train+val: the CLIP protocol).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xaiclip_cli.errors import UsageError
from xaiclip_cli.metrics.zeroshot import classification_metrics

COARSE = [10.0**e for e in range(-4, 5)]


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int, init: Any = None) -> Any:
    """LogisticRegression(lbfgs, max_iter=1000) at C; ``init`` (a fitted model at a nearby C) warm-starts lbfgs.

    The objective is strictly convex, so the warm start changes the iterations, not the optimum (to lbfgs's tol).
    """
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression(C=c, solver="lbfgs", max_iter=1000, random_state=seed, warm_start=init is not None)
    if init is not None:
        m.coef_, m.intercept_, m.classes_ = init.coef_.copy(), init.intercept_.copy(), init.classes_
    return m.fit(x, y)


def linear_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                 test: tuple[np.ndarray, np.ndarray], n_classes: int, seed: int = 0,
                 feature_names: list[str] | None = None, class_names: list[str] | None = None,
                 top: int = 5) -> dict[str, Any]:
    """Choose C on val by accuracy (first best), report val/test metrics and, with ``feature_names``, the
    coefficients per class and the top features per class. ``model``/``scaler`` are the fitted objects."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler

    (xtr, ytr), (xva, yva), (xte, yte) = train, val, test
    if np.unique(ytr).size < 2:
        raise UsageError(f"the train split holds {np.unique(ytr).size} class(es): a probe needs at least two")
    if yva.size == 0:
        raise UsageError("the val split is empty: C cannot be chosen")
    scaler = StandardScaler().fit(xtr)
    xtr_s, xva_s, xte_s = scaler.transform(xtr), scaler.transform(xva), scaler.transform(xte) if xte.size else xte
    tried: dict[float, tuple[float, Any]] = {}

    def trial(c: float) -> None:
        if c not in tried:
            below = [k for k in tried if k < c]  # warm start from the nearest smaller C (path in ascending C)
            init = tried[max(below)][1] if below else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                m = _fit(xtr_s, ytr, c, seed, init)
            tried[c] = (float((m.predict(xva_s) == yva).mean()), m)

    for c in COARSE:
        trial(c)
    best = max(COARSE, key=lambda c: (tried[c][0], -COARSE.index(c)))
    for f in (-0.5, -0.25, 0.25, 0.5):
        trial(float(best * 10.0**f))
    # Report the model at the chosen C fitted cold (no warm start): what a direct sklearn call gives.
    grid = sorted(tried)
    c_best = max(grid, key=lambda c: (tried[c][0], -grid.index(c)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = _fit(xtr_s, ytr, c_best, seed)

    def probs(x: np.ndarray) -> np.ndarray:
        p = np.zeros((x.shape[0], n_classes))
        p[:, model.classes_] = model.predict_proba(x)
        return p

    out: dict[str, Any] = {
        "C": c_best, "C_grid": [{"C": c, "val_accuracy": tried[c][0]} for c in grid],
        "val": classification_metrics(yva, probs(xva_s), n_classes),
        "test": classification_metrics(yte, probs(xte_s), n_classes) if yte.size else {"note": "test split empty"},
        "standardised_on": "train",
        "model": model, "scaler": scaler,  # popped by callers before writing JSON
    }
    if feature_names is not None:
        coef = model.coef_ if model.coef_.shape[0] > 1 else np.vstack([-model.coef_[0], model.coef_[0]])
        cls = [class_names[k] if class_names else str(k) for k in model.classes_]
        out["coefficients"] = {cn: dict(zip(feature_names, coef[i].tolist(), strict=True)) for i, cn in enumerate(cls)}
        out["top_features"] = {cn: [feature_names[k] for k in np.argsort(-coef[i], kind="stable")[:top]]
                               for i, cn in enumerate(cls)}
    return out
