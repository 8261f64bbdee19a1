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


# ------------------------------------------------------------------------------------------------------- smdl
def _smdl_items(folder: Path) -> list[dict[str, Any]]:
    """Recorded curves of one folder: attrib OUT (items/<target>/<stem>.npz + .done) or the reference export
    (npy/<class>/<stem>.npy + json/<class>/<stem>.json, possibly one level down)."""
    from xaiclip_cli.metrics import insertion_deletion as ID

    out: list[dict[str, Any]] = []
    if (folder / "items").is_dir():
        for npz in sorted((folder / "items").rglob("*.npz")):
            rel = npz.relative_to(folder / "items")
            target = rel.parts[0] if len(rel.parts) > 1 else ""
            row: dict[str, Any] = {"image": str(rel.with_suffix("")), "target": target, "layout": "compact"}
            if not npz.with_suffix(".done").exists():
                out.append({**row, "status": "skipped", "reason": "incomplete"})
                continue
            try:
                with np.load(npz, allow_pickle=False) as z:
                    row.update(area_ins=np.asarray(z["area_ins"]), consistency=np.asarray(z["consistency"]),
                               collaboration=np.asarray(z["collaboration"]))
                out.append({**row, "status": "ok", "reason": ""})
            except (OSError, ValueError, KeyError):
                out.append({**row, "status": "skipped", "reason": "unreadable"})
        return out
    roots = [folder] if (folder / "npy").is_dir() else sorted(p.parent for p in folder.glob("*/npy") if p.is_dir())
    if not roots:
        raise UsageError(f"{folder}: neither an attrib OUT folder (items/) nor a reference export (npy/ + json/)")
    for root in roots:
        for npy in sorted((root / "npy").rglob("*.npy")):
            rel = npy.relative_to(root / "npy")
            js = (root / "json" / rel).with_suffix(".json")
            row = {"image": str(rel.with_suffix("")), "target": rel.parts[0] if len(rel.parts) > 1 else "",
                   "layout": "legacy"}
            if not js.is_file():
                out.append({**row, "status": "skipped", "reason": "missing_json"})
                continue
            try:
                row.update(ID.legacy_item(npy, js))
                out.append({**row, "status": "ok", "reason": ""})
            except (OSError, ValueError, KeyError):
                out.append({**row, "status": "skipped", "reason": "unreadable"})
    return out


def _padded(curves: list[np.ndarray]) -> np.ndarray:
    n = max((c.size for c in curves), default=0)
    out = np.full((len(curves), n), np.nan)
    for i, c in enumerate(curves):
        out[i, : c.size] = c
    return out


def run_smdl(s: Any) -> dict[str, Any]:
    """`eval smdl`: insertion/deletion AUC from recorded SMDL curves (protocol (a), metrics.md §1)."""
    from xaiclip_cli.metrics import insertion_deletion as ID
    from xaiclip_cli.metrics.maps import check_attrib_configs

    folders = [Path(p) for p in s.results]
    if not folders:
        raise UsageError("give attrib results with --results DIR (attrib OUT or a reference npy/json export)")
    for d in folders:
        if not d.is_dir():
            raise UsageError(f"--results {d}: no such folder")
    config = check_attrib_configs(folders)
    out = R.prepare_dir(s.output_dir, s.overwrite)
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[np.ndarray]] = {"x_insertion": [], "y_insertion": [], "x_deletion": [], "y_deletion": []}
    for d in folders:
        for it in _smdl_items(d):
            key = it["image"] if len(folders) == 1 else f"{d.name}/{it['image']}"
            row = {"image": key, "target": it["target"], "label": "", "status": it["status"],
                   "reason": it["reason"], "layout": it["layout"]}
            if it["status"] == "ok":
                try:
                    xi, yi, xd, yd = ID.smdl_curves(it["area_ins"], it["consistency"], it["collaboration"],
                                                    it.get("x_del"))
                except ValueError:
                    row.update(status="skipped", reason="bad_lists")
                    rows.append(row)
                    continue
                row["insertion_auc"], row["deletion_auc"] = ID.sklearn_auc(xi, yi), ID.sklearn_auc(xd, yd)
                row["k"] = int(yi.size - 1)
                for name, v in zip(curves, (xi, yi, xd, yd), strict=True):
                    curves[name].append(v)
            rows.append(row)
    if s.limit:
        rows = rows[: s.limit]
    ok = [r for r in rows if r["status"] == "ok"]
    metrics = R.summarise(ok, ["insertion_auc", "deletion_auc"], s.bootstrap, s.seed)
    per_class = R.summarise(ok, ["insertion_auc", "deletion_auc"], s.bootstrap, s.seed, group_key="target")
    arrays = {k: _padded(v[: len(ok)]) for k, v in curves.items()}
    arrays["image"] = np.asarray([r["image"] for r in ok], dtype=str)
    R.write_curves(out, arrays)
    plot = None
    if ok:
        grid = np.linspace(0, 1, 101)

        def interp(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
            rows_ = [np.interp(grid, x[np.isfinite(x)], y[np.isfinite(y)]) for x, y in zip(xs, ys, strict=True)]
            return np.tile(grid, (len(rows_), 1)), np.vstack(rows_)

        R.plot_mean_curves(out, {"insertion": interp(arrays["x_insertion"], arrays["y_insertion"]),
                                 "deletion": interp(arrays["x_deletion"], arrays["y_deletion"])},
                           title=f"SMDL recorded curves (protocol a), {len(ok)} images", ylabel="p_target",
                           seed=s.seed)
        plot = "curves.png"
    R.write_per_image(out, rows)
    settings = {"protocol": "a (SMDL recorded scores)", "x_axis": "non-black pixel fraction nz(C_j)/P",
                "y_insertion": "[1 - collaboration_k] + consistency", "y_deletion": "[consistency_k] + "
                "(1 - collaboration)", "auc_rule": "sklearn.metrics.auc per image", "aggregation": "plain mean",
                "attrib_config": config, "bootstrap": s.bootstrap, "bootstrap_seed": s.seed}
    doc = R.eval_document(
        "smdl", settings, {"images": len(rows), "evaluated": len(ok), "skipped": R.skipped_counts(rows)}, metrics,
        per_class=per_class, extra={"notes": ["curves.npz: NaN-padded to the longest curve (k varies per image); "
                                             "the plot interpolates each curve on a uniform x grid"]},
        files=_files(out, per_image="per_image.csv", curves="curves.npz", plot=plot))
    R.write_eval_json(out, doc)
    return doc


# ----------------------------------------------------------------------------------------------- localization
class _Masks:
    """Ground-truth masks for map items: --masks DIR (<stem>.png|.npy) or the dataset's own masks."""

    def __init__(self, masks_dir: Path | None, dataset: str | None, split: str) -> None:
        self.dir = Path(masks_dir) if masks_dir is not None else None
        if self.dir is not None and not self.dir.is_dir():
            raise UsageError(f"--masks {self.dir}: no such folder")
        self.dataset, self.split = dataset, split
        self._sources: dict[str, Any] = {}

    def _source(self, ref: str) -> Any:
        if ref not in self._sources:
            from xaiclip_cli.data.refs import open_source

            self._sources[ref] = open_source(ref)
        return self._sources[ref]

    def get(self, item: Any) -> tuple[np.ndarray | None, int | None]:
        """(mask or None, class label or None) of an item."""
        from xaiclip_cli.metrics.maps import dataset_index

        if self.dir is not None:
            for ext in (".npy", ".png"):
                p = self.dir / f"{item.stem}{ext}"
                if p.is_file():
                    if ext == ".npy":
                        return np.load(p, allow_pickle=False), None
                    from PIL import Image

                    a = np.asarray(Image.open(p))
                    return (a[..., 0] if a.ndim == 3 else a), None
            return None, None
        ref = item.image.get("dataset") or self.dataset
        split, index = item.image.get("split"), item.image.get("index")
        if split is None or index is None:
            si = dataset_index(item.stem)
            if si is None:
                return None, None
            split, index = si
        if ref is None:
            return None, None
        sample = self._source(str(ref)).get(str(split), int(index))
        return sample.mask, int(sample.label)


def run_localization(s: Any) -> dict[str, Any]:
    """`eval localization`: pointing game, energy, IoU/Dice@t, AUPRC per map against its mask (§5, §8)."""
    from scipy.stats import spearmanr

    from xaiclip_cli.metrics import localization as L
    from xaiclip_cli.metrics.insertion_deletion import InvalidMap
    from xaiclip_cli.metrics.maps import collect

    items = collect(s.maps, s.limit)
    masks = _Masks(s.masks, s.dataset, s.split)
    if s.masks is None and s.dataset is None and not any(it.image.get("dataset") for it in items):
        raise UsageError("no masks: give --masks DIR (<image stem>.png|.npy) or --dataset with masks (toycells)")
    thr = L.parse_thresholds(s.thresholds)
    tuned: dict[int, float] | None = None
    notes: list[str] = []
    if thr == "tuned":
        if not s.tune_maps:
            raise UsageError("--thresholds tuned needs --tune-maps (maps of the --tune-split split)")
        tmaps, tmasks, tcls = [], [], []
        for it in collect(s.tune_maps):
            m, c = masks.get(it)
            if it.phi is not None and m is not None and np.asarray(m).any() and np.isfinite(it.phi).all():
                tmaps.append(it.phi)
                tmasks.append(np.asarray(m))
                tcls.append(-1 if c is None else c)
        if not tmaps:
            raise UsageError("--tune-maps: no map with a non-empty mask to tune on")
        tuned = L.tune_threshold(tmaps, tmasks, tcls)
        notes.append(f"thresholds tuned per class on {len(tmaps)} {s.tune_split} maps: {tuned}")
    out = R.prepare_dir(s.output_dir, s.overwrite)
    rows: list[dict[str, Any]] = []
    for it in items:
        row: dict[str, Any] = {"image": it.key, "target": it.target_name or "", "label": "", "status": "ok",
                               "reason": "", "method": it.method or it.kind}
        if it.phi is None:
            rows.append({**row, "status": "skipped", "reason": it.reason})
            continue
        mask, label = masks.get(it)
        if label is not None:
            row["label"] = label
        if mask is None:
            rows.append({**row, "status": "skipped", "reason": "missing_mask"})
            continue
        try:
            if tuned is not None:
                t = tuned.get(label if label is not None else -1, next(iter(tuned.values())))
                vals = L.image_metrics(it.phi, mask, [t], s.tolerance)
                vals["iou@tuned"], vals["dice@tuned"] = vals.pop(f"iou@{t:g}"), vals.pop(f"dice@{t:g}")
                vals.pop("iou_mean", None)
                vals["tuned_t"] = t
            else:
                ts = [] if thr == "otsu" else list(thr)
                vals = L.image_metrics(it.phi, mask, ts, s.tolerance, otsu=thr == "otsu")
        except InvalidMap as exc:
            rows.append({**row, "status": "skipped", "reason": exc.reason})
            continue
        if "target_score" in it.sidecar:
            vals["target_score"] = float(it.sidecar["target_score"])
        rows.append({**row, **vals})
    ok = [r for r in rows if r["status"] == "ok"]
    keys = [k for k in (ok[0] if ok else {}) if k not in ("image", "target", "label", "status", "reason", "method",
                                                           "target_score", "otsu_t", "tuned_t")]
    metrics = R.summarise(ok, keys, s.bootstrap, s.seed)
    extra: dict[str, Any] = {"notes": notes}
    if ok:
        by_class: dict[str, list[float]] = {}
        for r in ok:
            by_class.setdefault(str(r["label"] if r["label"] != "" else r["target"]), []).append(r["pointing_hit"])
        metrics["pointing_game_class_mean"] = {"mean": float(np.mean([np.mean(v) for v in by_class.values()])),
                                               "n": len(ok), "classes": len(by_class),
                                               "note": "mean of per-class accuracies (TorchRay)"}
        tert = L.area_tertiles(np.array([r["mask_area"] for r in ok]))
        for r, t in zip(ok, tert, strict=True):
            r["area_tertile"] = str(t)
        if all("target_score" in r for r in ok) and len(ok) > 2:
            link = {}
            for k in ("energy", "iou_mean", "iou@tuned", "iou@otsu", "pointing_hit"):
                vals = [(r["target_score"], r[k]) for r in ok if r.get(k) is not None]
                if len(vals) > 2:
                    a, b = np.array(vals).T
                    rho = spearmanr(a, b).statistic if np.ptp(a) and np.ptp(b) else float("nan")
                    link[k] = None if not np.isfinite(rho) else float(rho)
            extra["confidence_link_spearman"] = link
    per_class = R.summarise(ok, keys, s.bootstrap, s.seed, group_key="label")
    breakdown = {"mask_area": R.summarise(ok, keys, s.bootstrap, s.seed, group_key="area_tertile")} if ok else {}
    R.write_per_image(out, rows)
    settings = {"protocol": "localization", "map": "ReLU, bilinear to mask size (align_corners=False)",
                "pointing_game": {"tolerance_px": s.tolerance, "rule": "strict ||q-p*||^2 < tol^2, first row-major "
                                  "peak"}, "energy": "min-max map", "thresholds": s.thresholds,
                "tuned": tuned, "masks": str(s.masks) if s.masks else "dataset", "bootstrap": s.bootstrap,
                "bootstrap_seed": s.seed}
    doc = R.eval_document("localization", settings,
                          {"images": len(rows), "evaluated": len(ok), "skipped": R.skipped_counts(rows)}, metrics,
                          per_class=per_class, breakdown=breakdown, extra=extra,
                          files=_files(out, per_image="per_image.csv"))
    R.write_eval_json(out, doc)
    return doc
