"""Percentile bootstrap intervals and paired comparisons of dataset-level numbers (metrics.md §11).

scipy.stats.bootstrap is not used: it cannot share one recorded resampling of images across many metrics, which
the paired comparison and the per-class breakdowns need; the percentile rule itself is one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from xaiclip_cli.errors import UsageError


def resample_indices(n: int, b: int = 1000, seed: int = 0) -> np.ndarray:
    """[B, n] image indices drawn with replacement (numpy PCG64, seeded)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.integers(0, n, size=(b, n))


def bootstrap_ci(values: np.ndarray, b: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """{mean, std, ci_low, ci_high, n, B, seed}: percentile interval of the mean over resampled images."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    n = int(v.size)
    if n == 0:
        return {"mean": None, "std": None, "ci_low": None, "ci_high": None, "n": 0, "B": b, "seed": seed}
    out: dict[str, Any] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if n > 1 else 0.0, "n": n,
                           "B": b, "seed": seed}
    if b > 0 and n > 1:
        means = v[resample_indices(n, b, seed)].mean(axis=1)
        lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
        out["ci_low"], out["ci_high"] = float(lo), float(hi)
    else:
        out["ci_low"] = out["ci_high"] = None
    return out


def paired_comparison(a: np.ndarray, b_vals: np.ndarray, b: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean of a − b with its paired bootstrap interval and the Wilcoxon signed-rank p-value (zero_method wilcox)."""
    from scipy.stats import wilcoxon

    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b_vals, dtype=np.float64).reshape(-1)
    if x.size != y.size:
        raise UsageError(f"paired comparison needs the same images: {x.size} vs {y.size} values")
    d = x - y
    out = bootstrap_ci(d, b, seed)
    if np.count_nonzero(d) == 0:
        out["wilcoxon_p"] = 1.0
    else:
        out["wilcoxon_p"] = float(wilcoxon(x, y, zero_method="wilcox").pvalue)
    return out


def check_comparable(a: Mapping[str, Any], b: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> None:
    """Refuse to compare results whose recorded settings differ, naming the differing keys (metrics.md §0)."""
    keys = sorted((set(a) | set(b)) - set(ignore))
    diff = [k for k in keys if a.get(k) != b.get(k)]
    if diff:
        raise UsageError("results were computed with different settings: " + ", ".join(diff))
