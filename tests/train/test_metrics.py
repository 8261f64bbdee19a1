"""Tests of the epoch metrics against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xaiclip_cli.train.metrics import classification_metrics, split_metrics


def test_binary_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.9])
    prob = np.stack([1 - p1, p1], 1)
    m = classification_metrics(y, prob)
    assert m["auc"] == pytest.approx(0.75)  # 3 of 4 positive/negative pairs ordered correctly
    assert m["acc"] == pytest.approx(0.5)
    assert m["sensitivity"] == pytest.approx(0.5) and m["specificity"] == pytest.approx(0.5)


def test_patient_auc_uses_mean_slice_probability() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    p1 = np.array([0.9, 0.1, 0.6, 0.6, 0.2, 0.3])  # patients a: mean .5 (0), b: .6 (1), c: .2 (0), d: .3 (1)
    m = split_metrics(y, np.stack([1 - p1, p1], 1), ["a", "a", "b", "b", "c", "d"])
    assert m["patient_auc"] == pytest.approx(0.75)


def test_multiclass_auc_is_mean_one_vs_rest_and_nan_for_one_class() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    prob = rng.dirichlet(np.ones(3), size=8)
    want = np.mean([roc_auc_score(y == k, prob[:, k]) for k in range(3)])
    assert classification_metrics(y, prob)["auc"] == pytest.approx(want)
    assert math.isnan(classification_metrics(np.zeros(3, int), np.full((3, 2), 0.5))["auc"])
