"""What each `xaiclip eval` command does, as library functions on a settings object (the CLI stays thin).

Every ``run_*`` writes its result folder (schema in `xaiclip_cli.metrics.results`) and returns the ``eval.json``
document. Settings are read by attribute (``xaiclip_cli.config.eval.EvalSettings`` or any object with the fields).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xaiclip_cli.errors import UsageError
from xaiclip_cli.metrics import results as R


def result_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """The CLI result model's fields from an ``eval.json`` document."""
    metrics = []
    for name, v in doc.get("metrics", {}).items():
        if isinstance(v, dict) and "mean" in v:
            metrics.append({"metric": name, "mean": v.get("mean"), "ci_low": v.get("ci_low"),
                            "ci_high": v.get("ci_high"), "n": v.get("n")})
    return {
        "command": doc["command"], "output_dir": str(doc.get("files", {}).get("dir", "")),
        "images": int(doc["counts"].get("images", 0)), "evaluated": int(doc["counts"].get("evaluated", 0)),
        "skipped": dict(doc["counts"].get("skipped", {})), "metrics": metrics,
        "tables": doc.get("extra", {}).get("tables", {}), "notes": list(doc.get("extra", {}).get("notes", [])),
    }


def _files(out: Path, **names: str | None) -> dict[str, Any]:
    return {"dir": str(out), **names}


# ------------------------------------------------------------------------------------------ zeroshot / probe
def run_zeroshot(s: Any) -> dict[str, Any]:
    """`eval zeroshot`: per split and template (+ ensemble) metrics; concept scores when the store has concepts."""
    from xaiclip_cli.metrics import zeroshot as Z

    if s.h5 is None:
        raise UsageError("give the feature store with --h5")
    splits = tuple(s.splits)
    lib = Z.load_library(s.h5, splits, expect_model=s.store_model)
    out = R.prepare_dir(s.output_dir, s.overwrite, (*R.RESULT_FILES, "concept_scores.npz", "concept_scores.csv"))
    fam = None if s.family == "auto" else s.family
    zs = Z.zeroshot(lib, splits, fam)
    c = len(lib.class_names)
    ens = Z.ensemble(lib.label_groups)
    metrics: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    table: list[dict[str, Any]] = []
    notes: list[str] = []
    for sp in splits:
        per = zs["splits"][sp]
        if "note" in per:
            notes.append(per["note"])
            continue
        for tname, m in per.items():
            table.append({"split": sp, "template": tname, "n": m["n"], "accuracy": m["accuracy"],
                          "balanced_accuracy": m["balanced_accuracy"], "auc": m["auc"]})
            if m.get("auc_note"):
                notes.append(f"{sp}/{tname}: {m['auc_note']}")
        prob = Z.probabilities(Z.logits(lib.features[sp], ens, lib.logit_scale, lib.logit_bias), zs["family"])
        boot = Z.bootstrap_classification(lib.labels[sp], prob, c, s.bootstrap, s.seed)
        for k, v in boot.items():
            metrics[f"{sp}/ensemble/{k}"] = v
        pred = prob.argmax(axis=1)
        for i in range(lib.labels[sp].size):
            y = int(lib.labels[sp][i])
            rows.append({"image": int(lib.ids[sp][i]), "target": lib.class_names[y], "label": y, "status": "ok",
                         "reason": "", "split": sp, "pred": int(pred[i]), "p_true": float(prob[i, y]),
                         "correct": float(pred[i] == y)})
    extra: dict[str, Any] = {"zeroshot": zs, "tables": {"zero-shot": table}, "notes": sorted(set(notes)),
                             "class_names": lib.class_names}
    files = {"per_image": "per_image.csv"}
    if lib.concept_groups:
        cs = {sp: Z.concept_scores(lib, sp) for sp in splits}
        allx = np.concatenate([cs[sp] for sp in splits])
        ally = np.concatenate([lib.labels[sp] for sp in splits])
        np.savez(out / "concept_scores.npz", scores=allx, ids=np.concatenate([lib.ids[sp] for sp in splits]),
                 labels=ally, split=np.concatenate([[sp] * lib.labels[sp].size for sp in splits]).astype(str),
                 concepts=np.asarray(lib.concept_names, dtype=str))
        import csv

        with open(out / "concept_scores.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "label", "split", *lib.concept_names])
            for sp in splits:
                for i in range(lib.labels[sp].size):
                    w.writerow([int(lib.ids[sp][i]), int(lib.labels[sp][i]), sp,
                                *[f"{v:.6g}" for v in cs[sp][i]]])
        summary = Z.concept_summary(allx, ally, lib.class_names, lib.concept_names)
        extra["concepts"] = {"splits": list(splits), "per_class": summary}
        extra["tables"]["top concepts per class"] = [
            {"class": k, "top_concepts": ", ".join(t["concept"] for t in v["top_concepts"])} for k, v in summary.items()
        ]
        files.update(concept_scores="concept_scores.npz", concept_scores_csv="concept_scores.csv")
    settings = {"protocol": "zeroshot", "store": str(Path(s.h5).resolve()), "splits": list(splits),
                "family": zs["family"], "logit_scale": lib.logit_scale, "logit_bias": lib.logit_bias,
                "prototypes": "per template group; ensemble = mean of unit features, renormalised",
                "auc_rule": "sklearn roc_auc_score ovr macro (binary: class 1)", "bootstrap": s.bootstrap,
                "bootstrap_seed": s.seed}
    n = sum(int(lib.labels[sp].size) for sp in splits)
    R.write_per_image(out, rows)
    doc = R.eval_document("zeroshot", settings, {"images": n, "evaluated": n, "skipped": {}}, metrics,
                          model=lib.model, extra=extra, files=_files(out, **files))
    R.write_eval_json(out, doc)
    return doc


def run_probe(s: Any) -> dict[str, Any]:
    """`eval probe`: logistic regression on train, C on val, metrics on test (+ coefficients for concepts)."""
    from xaiclip_cli.metrics import probe as P
    from xaiclip_cli.metrics import zeroshot as Z

    if s.h5 is None:
        raise UsageError("give the feature store with --h5")
    lib = Z.load_library(s.h5, ("train", "val", "test"), need_labels=True, expect_model=s.store_model)
    out = R.prepare_dir(s.output_dir, s.overwrite)
    c = len(lib.class_names)
    if s.features == "concepts":
        x = {sp: Z.concept_scores(lib, sp) for sp in ("train", "val", "test")}
        names: list[str] | None = lib.concept_names
    else:
        x = {sp: np.asarray(lib.features[sp], dtype=np.float64) for sp in ("train", "val", "test")}
        names = None
    for sp in ("train", "val", "test"):
        if np.any(lib.labels[sp] < 0) or np.any(lib.labels[sp] >= c):
            raise UsageError(f"split {sp}: labels outside 0..{c - 1} (multi-label or unlabelled rows)")
    res = P.linear_probe((x["train"], lib.labels["train"]), (x["val"], lib.labels["val"]),
                         (x["test"], lib.labels["test"]), c, seed=s.seed, feature_names=names,
                         class_names=lib.class_names)
    model, scaler = res.pop("model"), res.pop("scaler")
    metrics: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    notes = [res[k]["auc_note"] for k in ("val", "test") if isinstance(res[k], dict) and res[k].get("auc_note")]
    if lib.labels["test"].size:
        prob = np.zeros((lib.labels["test"].size, c))
        prob[:, model.classes_] = model.predict_proba(scaler.transform(x["test"]))
        for k, v in Z.bootstrap_classification(lib.labels["test"], prob, c, s.bootstrap, s.seed).items():
            metrics[f"test/{k}"] = v
        pred = prob.argmax(axis=1)
        for i, y in enumerate(lib.labels["test"].tolist()):
            rows.append({"image": int(lib.ids["test"][i]), "target": lib.class_names[y], "label": y, "status": "ok",
                         "reason": "", "split": "test", "pred": int(pred[i]), "p_true": float(prob[i, y]),
                         "correct": float(pred[i] == y)})
    table = [{"split": k, "accuracy": res[k].get("accuracy"), "balanced_accuracy": res[k].get("balanced_accuracy"),
              "auc": res[k].get("auc")} for k in ("val", "test") if "accuracy" in res[k]]
    tables = {"probe": table}
    if names is not None:
        tables["top concepts per class (coefficients)"] = [
            {"class": k, "top_concepts": ", ".join(v)} for k, v in res["top_features"].items()]
    settings = {"protocol": "linear_probe", "store": str(Path(s.h5).resolve()), "features": s.features,
                "classifier": "sklearn LogisticRegression(lbfgs, max_iter=1000)", "C_rule":
                "val accuracy over 1e-4..1e4 (9) + refinement at x10^(+-0.25, +-0.5)", "standardise": "train only",
                "seed": s.seed, "bootstrap": s.bootstrap, "bootstrap_seed": s.seed}
    R.write_per_image(out, rows)
    n = int(lib.labels["test"].size)
    doc = R.eval_document("probe", settings, {"images": n, "evaluated": n, "skipped": {}}, metrics, model=lib.model,
                          extra={"probe": res, "tables": tables, "notes": notes, "class_names": lib.class_names},
                          files=_files(out, per_image="per_image.csv"))
    R.write_eval_json(out, doc)
    return doc
