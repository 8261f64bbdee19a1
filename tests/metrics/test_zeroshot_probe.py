"""`eval zeroshot` / `eval probe` against a direct NumPy/scikit-learn computation on the same store (metrics.md §10)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from tests.store.test_reader_fixtures import build_store
from xaiclip_cli.cli.main import app

runner = CliRunner()


def _run(args: list[str], code: int = 0) -> dict:
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == code, r.output
    return json.loads(r.stdout) if code == 0 else {"stderr": r.stderr}


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    p = tmp_path / "s.h5"
    build_store(p, "single", split_sizes=(60, 30, 45), d=16, t=1, seed=3)
    return p


def _direct(p: Path, split: str):
    with h5py.File(p, "r") as f:
        sp = np.array([s.decode() if isinstance(s, bytes) else s for s in f["split"][()]])
        rows = np.flatnonzero(f["written"][()] & (sp == split))
        x = f["image_features"][()][rows].astype(np.float64)
        y = f["labels"][()][rows]
        groups = {n: f["templates"][n]["text_features"][()].astype(np.float64) for n in f["templates"]}
        scale = float(f.attrs["logit_scale_exp"])
    return x, y, groups, scale


def test_zeroshot_matches_direct_computation(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "zs"
    _run(["eval", "zeroshot", "--h5", str(store), "--output-dir", str(out), "--bootstrap", "200"])
    doc = json.loads((out / "eval.json").read_text())
    for split in ("train", "val", "test"):
        x, y, groups, scale = _direct(store, split)
        labels = {n: g for n, g in groups.items() if n.startswith("label")}
        ens = _unit(np.mean([_unit(g) for g in labels.values()], axis=0))
        for name, t in [*labels.items(), ("ensemble", ens)]:
            lg = scale * _unit(x) @ _unit(t).T
            p = np.exp(lg - lg.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            got = doc["extra"]["zeroshot"]["splits"][split][name]
            assert got["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(1)), abs=1e-12)
            assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p.argmax(1)), abs=1e-12)
            assert got["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
        m = doc["metrics"][f"{split}/ensemble/accuracy"]
        assert m["ci_low"] <= m["mean"] <= m["ci_high"]
        a = doc["metrics"][f"{split}/ensemble/auc"]
        assert a["ci_low"] <= a["mean"] <= a["ci_high"] and a["ci_high"] - a["ci_low"] > 0
    # concept scores: ensemble of concept groups with the concept scale
    z = np.load(out / "concept_scores.npz")
    x, y, groups, _ = _direct(store, "train")
    with h5py.File(store, "r") as f:
        cscale = float(f.attrs["concept_logit_scale_exp"])
    cg = [g for n, g in groups.items() if n.startswith("concept")]
    cens = _unit(np.mean([_unit(g) for g in cg], axis=0))
    np.testing.assert_allclose(z["scores"][: y.size], cscale * _unit(x) @ cens.T, atol=1e-9)
    assert (out / "per_image.csv").read_text().count("\n") == 60 + 30 + 45 + 1


def test_bootstrap_auc_interval_matches_resampled_sklearn(store: Path) -> None:
    from xaiclip_cli.metrics.bootstrap import resample_indices
    from xaiclip_cli.metrics.zeroshot import _weighted_auc

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40).astype(bool)
    s = np.round(rng.random(40), 1)  # ties on purpose
    idx = resample_indices(40, 20, 1)
    w = np.zeros((20, 40))
    for b in range(20):
        np.add.at(w[b], idx[b], 1)
    got = _weighted_auc(w, y, s)
    ref = [roc_auc_score(y[i], s[i]) for i in idx]
    np.testing.assert_allclose(got, ref, atol=1e-12)


@pytest.mark.parametrize("features", ["global", "concepts"])
def test_probe_matches_direct_sklearn(store: Path, tmp_path: Path, features: str) -> None:
    out = tmp_path / "pr"
    doc = _run(["eval", "probe", "--h5", str(store), "--output-dir", str(out), "--features", features,
                "--bootstrap", "100"])
    full = json.loads((out / "eval.json").read_text())
    res = full["extra"]["probe"]
    best = max(g["val_accuracy"] for g in res["C_grid"])
    assert next(g for g in res["C_grid"] if g["C"] == res["C"])["val_accuracy"] == best
    assert len(res["C_grid"]) == 13
    feats = {}
    for sp in ("train", "val", "test"):
        x, y, groups, _ = _direct(store, sp)
        if features == "concepts":
            with h5py.File(store, "r") as f:
                cscale = float(f.attrs["concept_logit_scale_exp"])
            cg = [g for n, g in groups.items() if n.startswith("concept")]
            x = cscale * _unit(x) @ _unit(np.mean([_unit(g) for g in cg], axis=0)).T
        feats[sp] = (x, y)
    sc = StandardScaler().fit(feats["train"][0])
    m = LogisticRegression(C=res["C"], solver="lbfgs", max_iter=1000, random_state=0).fit(
        sc.transform(feats["train"][0]), feats["train"][1])
    pred = m.predict(sc.transform(feats["test"][0]))
    assert res["test"]["accuracy"] == pytest.approx(accuracy_score(feats["test"][1], pred), abs=1e-12)
    assert doc["metrics"][0]["metric"] == "test/accuracy"
    if features == "concepts":
        assert set(res["coefficients"]) == {"basophil", "eosinophil", "lymphocyte"}
        cls0 = res["coefficients"]["basophil"]
        assert list(cls0.values()) == pytest.approx(m.coef_[0].tolist(), abs=1e-9)
        assert res["top_features"]["basophil"][0] == max(cls0, key=cls0.get)


def test_store_without_label_templates(store: Path, tmp_path: Path) -> None:
    with h5py.File(store, "a") as f:
        for n in list(f["templates"]):
            if n.startswith("label"):
                del f["templates"][n]
    r = _run(["eval", "zeroshot", "--h5", str(store), "--output-dir", str(tmp_path / "o")], code=2)
    assert "no label templates" in r["stderr"] and r["stderr"].count("\n") == 1


def test_store_by_another_model(store: Path, tmp_path: Path) -> None:
    r = _run(["eval", "zeroshot", "--h5", str(store), "--store-model", "other", "--output-dir", str(tmp_path / "o")],
             code=2)
    assert "written by model 'toy-vit'" in r["stderr"]
    # text features written by another model than the image rows: group fingerprint mismatch
    with h5py.File(store, "a") as f:
        f.attrs["model_fingerprint"] = "a" * 64
    r = _run(["eval", "zeroshot", "--h5", str(store), "--output-dir", str(tmp_path / "o2")], code=2)
    assert "another model" in r["stderr"]


def test_one_class_split_says_auc_undefined(store: Path, tmp_path: Path) -> None:
    with h5py.File(store, "a") as f:
        lab = f["labels"][()]
        sp = np.array([s.decode() if isinstance(s, bytes) else s for s in f["split"][()]])
        lab[sp == "test"] = 1
        f["labels"][...] = lab
    doc = _run(["eval", "zeroshot", "--h5", str(store), "--output-dir", str(tmp_path / "o")])
    assert any("AUC undefined" in n for n in doc["notes"])
    full = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert full["extra"]["zeroshot"]["splits"]["test"]["ensemble"]["auc"] is None
    with h5py.File(store, "a") as f:
        lab = f["labels"][()]
        lab[sp == "train"] = 0
        f["labels"][...] = lab
    r = _run(["eval", "probe", "--h5", str(store), "--output-dir", str(tmp_path / "p")], code=2)
    assert "needs at least two" in r["stderr"]


def test_results_not_overwritten(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "zs"
    _run(["eval", "zeroshot", "--h5", str(store), "--output-dir", str(out), "--bootstrap", "0"])
    before = (out / "eval.json").read_text()
    r = _run(["eval", "zeroshot", "--h5", str(store), "--output-dir", str(out)], code=2)
    assert "--overwrite" in r["stderr"] and (out / "eval.json").read_text() == before
    _run(["eval", "zeroshot", "--h5", str(store), "--output-dir", str(out), "--overwrite", "--bootstrap", "0"])
    r = _run(["eval", "zeroshot", "--h5", str(tmp_path / "missing.h5"), "--output-dir", str(tmp_path / "m")], code=2)
    assert "not found" in r["stderr"]
