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
    """Ground-truth masks for map items: --masks DIR (<stem>.png|.npy) or the dataset's own ``kind`` masks."""

    def __init__(self, masks_dir: Path | None, dataset: str | None, split: str, kind: str = "cell") -> None:
        self.dir = Path(masks_dir) if masks_dir is not None else None
        if self.dir is not None and not self.dir.is_dir():
            raise UsageError(f"--masks {self.dir}: no such folder")
        if kind != "cell" and self.dir is not None:
            raise UsageError(f"--mask-kind {kind} reads the dataset's {kind} masks; --masks DIR gives one mask per "
                             "image: drop --masks or use --mask-kind cell")
        self.dataset, self.split, self.kind = dataset, split, kind
        self._sources: dict[str, Any] = {}

    def _source(self, ref: str) -> Any:
        if ref not in self._sources:
            from xaiclip_cli.data.refs import open_source

            self._sources[ref] = open_source(ref)
        return self._sources[ref]

    def check(self, items: list[Any]) -> None:
        """Refuse (before anything is written) a mask kind one of the items' datasets does not hold."""
        if self.dir is not None or self.kind == "cell":
            return  # the cell kind is Sample.mask: a source without it gives missing_mask skips, counted
        refs = {str(it.image.get("dataset") or self.dataset) for it in items
                if it.image.get("dataset") or self.dataset}
        for ref in sorted(refs):
            kinds = self._source(ref).mask_kinds()
            if self.kind not in kinds:
                raise UsageError(f"--mask-kind {self.kind}: dataset {ref} has no {self.kind} masks (has: "
                                 f"{', '.join(kinds) or 'none'}; toy cells ship nuclei masks)")

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
        src = self._source(str(ref))
        sample = src.get(str(split), int(index))
        mask = sample.mask if self.kind == "cell" else src.get_mask(str(split), int(index), self.kind)
        return mask, int(sample.label)


def run_localization(s: Any) -> dict[str, Any]:
    """`eval localization`: pointing game, energy, IoU/Dice@t, AUPRC per map against its mask (§5, §8)."""
    from scipy.stats import spearmanr

    from xaiclip_cli.metrics import localization as L
    from xaiclip_cli.metrics.insertion_deletion import InvalidMap
    from xaiclip_cli.metrics.maps import collect

    items = collect(s.maps, s.limit)
    kind = getattr(s, "mask_kind", "cell")
    masks = _Masks(s.masks, s.dataset, s.split, kind)
    if s.masks is None and s.dataset is None and not any(it.image.get("dataset") for it in items):
        raise UsageError("no masks: give --masks DIR (<image stem>.png|.npy) or --dataset with masks (toycells)")
    thr = L.parse_thresholds(s.thresholds)
    tuned: dict[int, float] | None = None
    notes: list[str] = []
    tune_items = collect(s.tune_maps) if thr == "tuned" and s.tune_maps else []
    masks.check([*items, *tune_items])
    if thr == "tuned":
        if not s.tune_maps:
            raise UsageError("--thresholds tuned needs --tune-maps (maps of the --tune-split split)")
        tmaps, tmasks, tcls = [], [], []
        for it in tune_items:
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
                               "reason": "", "method": it.method or it.kind, "image_stem": it.stem}
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
                                                           "image_stem",
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
                "tuned": tuned, "masks": str(s.masks) if s.masks else "dataset", "mask_kind": kind,
                "bootstrap": s.bootstrap,
                "bootstrap_seed": s.seed}
    doc = R.eval_document("localization", settings,
                          {"images": len(rows), "evaluated": len(ok), "skipped": R.skipped_counts(rows)}, metrics,
                          per_class=per_class, breakdown=breakdown, extra=extra,
                          files=_files(out, per_image="per_image.csv"))
    R.write_eval_json(out, doc)
    return doc


# -------------------------------------------------------------------------- model-based: faithfulness, mufidelity, drop
def _load_backend(s: Any, device: str | None = None) -> Any:
    """The settings' backend on ``device`` (default: --device, or the first of --gpus for the one-process
    commands; `eval faithfulness` workers pass the device the job runner gives them)."""
    import torch

    from xaiclip_cli.models.registry import load_backend

    torch.manual_seed(s.seed)
    if s.threads:
        torch.set_num_threads(s.threads)
    if device is None:
        device = s.device
        if s.gpus and s.device != "cpu":
            device = f"cuda:{s.gpus[0]}"  # mufidelity/drop/sanity run in one process
    backend = load_backend(s.backend, s.model, revision=s.revision, device="auto" if device == "auto" else device,
                           trust_remote_code=bool(getattr(s, "trust_remote_code", False)))
    return backend


def _model_common(s: Any) -> dict[str, Any]:
    """Settings recorded by every model-based command."""
    return {"score": s.score, "target_rule": s.target, "backend": s.backend, "model_name": s.model,
            "revision": s.revision, "space": "model input after preprocessing (normalised)"}


class _ModelRun:
    """Shared state of a model-based eval: items, images, scorers per text set, rows, resume log."""

    def __init__(self, s: Any, command: str, settings: dict[str, Any]) -> None:
        from xaiclip_cli.metrics.maps import collect
        from xaiclip_cli.metrics.scoring import ImageResolver

        self.s, self.command = s, command
        self.items = collect(s.maps, s.limit)
        self.resolver = ImageResolver(s.images, s.dataset, s.split)
        self.resolver.check_counts(self.items)
        self.settings = settings
        # What the per-image values depend on (the bootstrap only changes the summary, so it may change on resume).
        guard = {k: v for k, v in settings.items() if k not in ("bootstrap", "bootstrap_seed")}
        out = Path(s.output_dir)
        if (out / "eval.json").exists() and not s.overwrite:
            raise UsageError(f"{out / 'eval.json'} exists; pass --overwrite to replace the results in {out}")
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.log = out / "progress.jsonl"
        self.done: dict[str, dict[str, Any]] = {}
        if s.overwrite and self.log.exists():
            self.log.unlink()
        if self.log.exists():
            import json

            lines = self.log.read_text(encoding="utf-8").splitlines()
            head = json.loads(lines[0]) if lines else {}
            saved, mine = head.get("settings") or {}, json.loads(json.dumps(guard, default=str))
            if saved != mine:
                keys = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
                diff = ", ".join(f"{k}: {saved.get(k)!r} -> {mine.get(k)!r}" for k in keys)
                raise UsageError(f"{self.log} was written with different settings ({diff}); pass --overwrite to "
                                 "start over")
            for ln in lines[1:]:
                try:
                    rec = json.loads(ln)
                except ValueError:
                    continue  # a line cut by an interrupt: that image is redone
                self.done[rec["row"]["image"]] = rec
        else:
            import json

            self.log.write_text(json.dumps({"settings": guard}, default=str) + "\n", encoding="utf-8")
        self.backend = _load_backend(s)
        self.scorers: dict[tuple[str, ...], Any] = {}
        from xaiclip_cli.metrics.scoring import model_record

        self.model = model_record(self.backend)

    def scorer(self, prompts: list[str]) -> Any:
        """The target scorer of one text set."""
        from xaiclip_cli.metrics.scoring import cached_scorer

        return cached_scorer(self.scorers, self.backend, prompts, self.s.score)

    def record(self, row: dict[str, Any], **arrays: Any) -> None:
        import json

        rec = {"row": row, **{k: np.asarray(v).tolist() for k, v in arrays.items()}}
        self.done[row["image"]] = rec
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, default=float) + "\n")

    def pending(self) -> list[tuple[Any, Any]]:
        """(item, row) of the items not done yet; skipped items are recorded at once."""
        from xaiclip_cli.metrics.scoring import texts_of

        todo = []
        for it in self.items:
            if it.key in self.done:
                continue
            row = {"image": it.key, "target": it.target_name or "", "label": "", "status": "ok", "reason": "",
                   "method": it.method or it.kind, "image_stem": it.stem}
            if it.phi is None:
                self.record({**row, "status": "skipped", "reason": it.reason})
                continue
            if not np.isfinite(it.phi).all():
                self.record({**row, "status": "skipped", "reason": "nan"})
                continue
            todo.append((it, row, texts_of(it, self.s.text)))
        return todo

    def batches(self, per: int) -> Any:
        """Yield lists of (item, row, names, scorer, image) of at most ``per`` images (missing images recorded)."""
        group: list[Any] = []
        for it, row, (names, prompts) in self.pending():
            img = self.resolver.get(it)
            if img is None:
                self.record({**row, "status": "skipped", "reason": "missing_image"})
                continue
            group.append((it, row, names, self.scorer(prompts), img))
            if len(group) >= per:
                yield group
                group = []
        if group:
            yield group

    def rows(self) -> list[dict[str, Any]]:
        order = {it.key: i for i, it in enumerate(self.items)}
        return [self.done[k]["row"] for k in sorted(self.done, key=lambda k: order.get(k, 1 << 30))]


def by_text_set(group: list[Any]) -> list[tuple[list[Any], Any, Any]]:
    """A batch of (item, row, names, scorer, image) split by scorer (text set), in first-seen order:
    (items, scorer, their unperturbed pixels) each."""
    by_sc: dict[int, list[Any]] = {}
    for g in group:
        by_sc.setdefault(id(g[3]), []).append(g)
    return [(sub, sub[0][3], sub[0][3].pixels([g[4] for g in sub])) for sub in by_sc.values()]


def _scorer_groups(run: _ModelRun, group: list[Any]) -> Any:
    """Split a batch of items by scorer (text set): (items, scorer, unperturbed pixels, target per item) each."""
    for sub, sc, x in by_text_set(group):
        yield sub, sc, x, _targets(run, sub, x)


def _targets(run: _ModelRun, group: list[Any], x: Any) -> list[int]:
    """Target index per image (one batched forward of the unperturbed images decides `best`/fallbacks; skipped
    when every target is fixed by the rule or the sidecars, as it changes no number)."""
    from xaiclip_cli.metrics.scoring import needs_scores, resolve_target

    full: Any = [None] * len(group)
    if any(needs_scores(run.s.target, it, names) for it, _row, names, _sc, _img in group):
        full = group[0][3].scores(x).detach().cpu().numpy()  # the group shares one scorer (text set)
    return [resolve_target(run.s.target, it, names, full[j]) for j, (it, _row, names, _sc, _img) in
            enumerate(group)]


def _check_relative_drop(s: Any) -> None:
    if s.ad_variant == "relative" and s.score in ("cosine", "logit"):
        raise UsageError(f"relative average drop needs positive scores: use --score softmax or sigmoid, or "
                         f"--ad-variant absolute (got --score {s.score})")


def run_faithfulness(s: Any, progress: Any = None, warn: Any = None) -> dict[str, Any]:
    """`eval faithfulness`: insertion and deletion re-evaluated on perturbed images (protocol (b), §2); sharded and
    resumable (`xaiclip_cli.metrics.faithfulness_job`). Returns the eval.json document."""
    from xaiclip_cli.metrics.faithfulness_job import run

    return run(s, progress, warn)["doc"]


def run_mufidelity(s: Any) -> dict[str, Any]:
    """`eval mufidelity`: seeded xplique MuFidelity / Quantus-style faithfulness correlation (§3)."""
    from xaiclip_cli.metrics import insertion_deletion as ID
    from xaiclip_cli.metrics import mufidelity as MF
    from xaiclip_cli.metrics.scoring import image_seed

    kind, value = ID.parse_baseline(s.baseline)
    settings = {"protocol": "mufidelity", "subset": s.subset, "grid_size": s.grid_size, "samples": s.samples,
                "subset_percent": s.subset_percent, "subset_size": s.subset_size, "corr": s.corr,
                "upsampling": "torch nearest-exact", "baseline": ID.baseline_record(kind, value),
                "mask_seed": f"PCG64(SeedSequence([seed, crc32(map key)])), seed {s.seed}",
                "nan_rule": "constant delta or attribution -> 0", **_model_common(s), "seed": s.seed,
                "bootstrap": s.bootstrap, "bootstrap_seed": s.seed}
    run = _ModelRun(s, "mufidelity", settings)
    for group in run.batches(1):
        it, row, names, sc, img = group[0]
        x = sc.pixels([img])
        t = _targets(run, group, x)[0]
        try:
            phi = ID.input_map(it.phi, sc.size)
        except ID.InvalidMap as exc:
            run.record({**row, "status": "skipped", "reason": exc.reason})
            continue
        base = ID.make_baseline(kind, x, mean=sc.mean, std=sc.std, value=value, seed=s.seed)[0]
        rng = image_seed(s.seed, it.stem or it.key)
        if s.subset == "bernoulli":
            keep = MF.bernoulli_masks(rng, s.samples, s.grid_size, sc.size, s.subset_percent)
        else:
            keep = MF.fixed_masks(rng, s.samples, (int(x.shape[1]), *sc.size), s.subset_size)

        def f(b: Any, t: int = t, sc: Any = sc) -> Any:
            return sc.scores(b)[:, t]

        rho, delta, _attr = MF.mufidelity_image(f, x[0], phi, base, keep, s.corr, s.batch_size)
        run.record({**row, "target": names[t], "target_index": t, "mufidelity": rho,
                    "delta_std": float(np.std(delta))})
    rows = run.rows()
    ok = [r for r in rows if r["status"] == "ok"]
    metrics = R.summarise(ok, ["mufidelity"], s.bootstrap, s.seed)
    R.write_per_image(run.out, rows)
    counts = {"images": len(rows), "evaluated": len(ok), "skipped": R.skipped_counts(rows)}
    doc = R.eval_document("mufidelity", settings, counts, metrics, model=run.model,
                          per_class=R.summarise(ok, ["mufidelity"], s.bootstrap, s.seed, group_key="target"),
                          files=_files(run.out, per_image="per_image.csv"))
    R.write_eval_json(run.out, doc)
    return doc


def run_drop(s: Any) -> dict[str, Any]:
    """`eval drop`: average drop, increase in confidence, average gain (§4)."""
    import torch

    from xaiclip_cli.metrics import drop as D
    from xaiclip_cli.metrics import insertion_deletion as ID

    _check_relative_drop(s)
    settings = {"protocol": "average_drop", "ad_variant": s.ad_variant, "mask_space": s.mask_space,
                "mask": "map min-max to [0,1] at input size (bilinear)", "gain": "ReLU(O-Y)/(1-Y)",
                **_model_common(s), "seed": s.seed, "bootstrap": s.bootstrap, "bootstrap_seed": s.seed}
    run = _ModelRun(s, "drop", settings)
    for group in run.batches(s.batch_size):
        for sub, sc, x, tg in _scorer_groups(run, group):
            keep, ms = [], []
            for j, (it, row, *_r) in enumerate(sub):
                try:
                    m = ID.input_map(it.phi, sc.size)
                except ID.InvalidMap as exc:
                    run.record({**row, "status": "skipped", "reason": exc.reason})
                    continue
                keep.append(j)
                ms.append(D.minmax(m))
            if not keep:
                continue
            xs = x[keep]
            mt = torch.as_tensor(np.stack(ms), dtype=xs.dtype, device=xs.device)[:, None]
            masked = xs * mt if s.mask_space == "normalised" else sc.from_pixel_space(sc.to_pixel_space(xs) * mt)
            tt = torch.as_tensor([tg[j] for j in keep])
            y = sc(xs, tt).double().cpu().numpy()
            o = sc(masked, tt).double().cpu().numpy()
            vals = D.drop_values(y, o, s.ad_variant)
            for k, j in enumerate(keep):
                it, row, names = sub[j][0], sub[j][1], sub[j][2]
                run.record({**row, "target": names[int(tt[k])], "target_index": int(tt[k]), "Y": float(y[k]),
                            "O": float(o[k]), **{n: float(v[k]) for n, v in vals.items()}})
    rows = run.rows()
    ok = [r for r in rows if r["status"] == "ok"]
    keys = ["average_drop", "increase_in_confidence", "average_gain"]
    metrics = R.summarise(ok, keys, s.bootstrap, s.seed)
    R.write_per_image(run.out, rows)
    counts = {"images": len(rows), "evaluated": len(ok), "skipped": R.skipped_counts(rows)}
    doc = R.eval_document("drop", settings, counts, metrics, model=run.model,
                          per_class=R.summarise(ok, keys, s.bootstrap, s.seed, group_key="target"),
                          extra={"notes": ["papers report AD and IC x100"]},
                          files=_files(run.out, per_image="per_image.csv"))
    R.write_eval_json(run.out, doc)
    return doc


# ------------------------------------------------------------------------------------------------------ sanity
def _sanity_images(s: Any) -> tuple[list[np.ndarray], list[str], list[str] | None]:
    """(images, keys, class names) from --dataset (first --limit of --split) or --images."""
    from xaiclip_cli.explain.api import load_image

    n = s.limit or 8
    if s.dataset:
        from xaiclip_cli.data.refs import open_source

        src = open_source(s.dataset)
        size = src.split_sizes().get(s.split, 0)
        if size == 0:
            raise UsageError(f"--dataset {s.dataset}: split {s.split!r} is empty")
        idx = list(range(min(n, size)))
        return ([src.get(s.split, i).image for i in idx], [f"{s.split}_{i:05d}" for i in idx],
                [str(c) for c in (src.info().class_names or [])] or None)
    files: list[Path] = []
    for p in s.images:
        p = Path(p)
        if not p.exists():
            raise UsageError(f"--images {p}: no such file or folder")
        files.extend([p] if p.is_file() else sorted(q for q in p.rglob("*") if q.suffix.lower() in
                                                     (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")))
    if not files:
        raise UsageError("no images: give --dataset REF or --images PATH")
    files = files[:n]
    return [load_image(f) for f in files], [f.stem for f in files], None


def _cam_sanity_maps(s: Any, backend: Any, images: list[np.ndarray], tmap: dict[str, str], used: set[str]
                     ) -> tuple[Any, Any, list[int], str | None]:
    """(maps_for(text map, targets), one_map(image, prompts, target), best targets, layer) of a CAM method."""
    import torch

    from xaiclip_cli.explain.api import CamRunner
    from xaiclip_cli.metrics import sanity as S

    # Targets fixed on the trained model (so every step explains the same text).
    probe = CamRunner(backend, tmap, s.method, "best", s.target_layer, s.cam_score)
    with torch.no_grad():
        g, _ = backend.encode_image(probe.pixels(images))
        targets = backend.score(g.float(), probe.text_global.float(), "logit").argmax(1).tolist()
    layer = None if s.method == "legrad" else (s.target_layer or probe.resolve_layer(probe.pixels(images[:1])).name)

    def own_grid(r: Any) -> np.ndarray:
        own = min(r.raw.shape) >= S.SSIM_WINDOW  # SSIM's 7x7 window needs a grid at least that big
        used.add("own grid" if own else "input size (grid smaller than the SSIM window)")
        return np.asarray(r.raw if own else r.map, dtype=np.float64)

    def maps_for(text_map: dict[str, str], tg: list[int]) -> list[np.ndarray]:
        res: list[np.ndarray | None] = [None] * len(images)
        for t in sorted(set(tg)):
            idx = [i for i, k in enumerate(tg) if k == t]
            runner = CamRunner(backend, text_map, s.method, int(t), layer, s.cam_score)
            for i, r in zip(idx, runner.run([images[i] for i in idx], batch_size=8), strict=True):
                res[i] = own_grid(r)
        return [np.asarray(m, dtype=np.float64) for m in res]

    def one_map(i: int, prompts: list[str], t: int) -> np.ndarray:
        names = [*tmap, *(f"extra{j}" for j in range(len(prompts) - len(tmap)))]
        runner = CamRunner(backend, dict(zip(names, prompts, strict=True)), s.method, int(t), layer, s.cam_score)
        return own_grid(runner.run([images[i]])[0])

    return maps_for, one_map, targets, layer


def run_sanity(s: Any) -> dict[str, Any]:
    """`eval sanity`: randomisation and random-prompt checks of a CAM method or of SMDL attrib rank maps (§9)."""
    from xaiclip_cli.explain.cam import METHODS
    from xaiclip_cli.metrics import sanity as S

    attrib = s.method == S.ATTRIB
    if not attrib and s.method not in METHODS:  # before any image or model is read
        raise UsageError(f"unknown --method {s.method!r} (choose from {', '.join(METHODS)}, or {S.ATTRIB})")
    if attrib and s.target_layer:
        raise UsageError("--target-layer does not apply to --method attrib (SMDL ranks image regions); drop it")
    images, keys, classes = _sanity_images(s)
    if len(images) < 2:
        raise UsageError("sanity needs at least two images (the pass band compares maps of different images)")
    texts = list(s.text) or ([f"a photo of a {c}" for c in classes] if classes else [])
    if len(texts) < 2:
        raise UsageError("sanity needs at least two texts: give --text (repeatable) or a --dataset with classes")
    existing = [n for n in R.RESULT_FILES if (Path(s.output_dir) / n).exists()]
    if existing and not s.overwrite:  # refused before the model loads; the folder is created only once maps exist
        R.prepare_dir(s.output_dir, s.overwrite)
    backend = _load_backend(s)
    names = [f"t{i}" for i in range(len(texts))]
    tmap = dict(zip(names, texts, strict=True))
    used: set[str] = set()
    if attrib:
        spec = S.AttribSpec(division=s.attrib_division, grid=s.attrib_grid, region_size=s.attrib_region_size,
                            search=s.attrib_search)
        am = S.AttribMaps(backend, images, spec)  # divides every image first: a bad grid fails before any output
        targets = am.best_targets(texts)  # fixed on the trained model, so every step explains the same text
        layer = None
        used.add("input size (rank map of the SMDL regions)")

        def maps_for(text_map: dict[str, str], tg: list[int]) -> list[np.ndarray]:
            return am.maps(list(text_map.values()), tg)

        def one_map(i: int, prompts: list[str], t: int) -> np.ndarray:
            return am.maps(prompts, [t], [i])[0]
    else:
        maps_for, one_map, targets, layer = _cam_sanity_maps(s, backend, images, tmap, used)
    if s.target not in ("sidecar", "best"):
        from xaiclip_cli.explain.targets import parse_target

        t = parse_target(s.target, names if not s.target.lstrip("-").isdigit() else names)
        targets = [int(t)] * len(images)
    out = R.prepare_dir(s.output_dir, s.overwrite)

    trained = maps_for(tmap, targets)
    band = S.random_pair_baseline(trained, s.pairs, s.seed)
    checks: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {"image": np.asarray(keys, dtype=str)}
    per_image: list[dict[str, Any]] = [{"image": k, "target": texts[t], "label": "", "status": "ok", "reason": ""}
                                       for k, t in zip(keys, targets, strict=True)]

    def record(name: str, steps: list[str], sims: dict[str, np.ndarray]) -> None:
        # Cascading and prompt checks are judged at the last step (everything randomised / the other prompt); the
        # independent variant has no "fully randomised" step, so it is judged on the mean over its steps.
        def final(v: np.ndarray) -> np.ndarray:
            return v[:, 1:].mean(axis=1) if name == "image_independent" else v[:, -1]

        checks[name] = {"steps": steps, **{f"{k}_mean": v.mean(axis=0).tolist() for k, v in sims.items()},
                        "verdict": {k: S.verdict(final(v), band[k], s.bootstrap, s.seed) for k, v in sims.items()},
                        "judged_on": "mean over steps" if name == "image_independent" else "last step"}
        arrays[f"steps_{name}"] = np.asarray(steps, dtype=str)
        for k, v in sims.items():
            arrays[f"sim_{name}_{k}"] = v
            for i, row in enumerate(per_image):
                row[f"{name}_{k}_final"] = float(final(v)[i])

    def tower_check(name: str, tower: str, independent: bool) -> None:
        units = S.tower_units(backend, tower)
        snap = S.Snapshot(backend.model if hasattr(backend, "model") else backend.vision_module())
        try:
            steps, maps = S.randomisation_curve(lambda: maps_for(tmap, targets), units, order=s.order,
                                                independent=independent, seed=s.seed)
        finally:
            snap.restore()
        record(name, steps, S.curve_similarities(steps, maps))

    if "image" in s.checks:
        tower_check("image_cascading", "image", False)
    if "text" in s.checks:
        tower_check("text_cascading", "text", False)
    if "independent" in s.checks:
        tower_check("image_independent", "image", True)
    if "prompt" in s.checks:
        rng = np.random.Generator(np.random.PCG64(s.seed))
        other = [int(rng.choice([j for j in range(len(texts)) if j != t])) for t in targets]
        other_maps = maps_for(tmap, other)
        # one map per random prompt and image (prompts differ per target text)
        rand_maps = []
        for i, t in enumerate(targets):
            rp = S.random_token_prompt(backend, texts[t], rng)
            rand_maps.append(one_map(i, [*texts, rp], len(texts)))
        sims = {k: np.zeros((len(images), 3)) for k in ("spearman", "ssim")}
        for i in range(len(images)):
            for j, m in enumerate((trained[i], other_maps[i], rand_maps[i])):
                v = S.similarity(m, trained[i])
                for k in sims:
                    sims[k][i, j] = v[k]
        record("prompt_other_text", ["target", "other text"], {k: v[:, :2] for k, v in sims.items()})
        record("prompt_random_tokens", ["target", "random tokens"], {k: v[:, [0, 2]] for k, v in sims.items()})
    R.write_curves(out, arrays)
    _plot_sanity(out, checks, band, s.method)
    R.write_per_image(out, per_image)
    metrics = {f"{c}/{k}_final": {"mean": v["verdict"][k]["final_mean"], "ci_low": v["verdict"][k]["ci_low"],
                                  "ci_high": v["verdict"][k]["ci_high"], "n": len(images)}
               for c, v in checks.items() for k in ("spearman", "ssim")}
    table = [{"check": c, "sim": k, "final": v["verdict"][k]["final_mean"], "band": v["verdict"][k]["band"],
              "margin": v["verdict"][k]["margin"], "pass": v["verdict"][k]["pass"]}
             for c, v in checks.items() for k in ("ssim", "spearman")]
    settings = {"protocol": "sanity", "method": s.method, "cam_score": None if attrib else s.cam_score,
                "layer": layer,
                "attrib": {**spec.record(am.size), "score": am.family, "logit_scale": am.logit_scale}
                if attrib else None,
                "order": s.order, "checks": list(s.checks), "reinit": "reset_parameters per submodule, else "
                "N(0, 0.02), torch seed = seed + step", "similarity": {"spearman": "scipy spearmanr of |maps|",
                "ssim": f"skimage structural_similarity, gaussian sigma {S.SSIM_SIGMA:.4f} (7x7), data_range 1, "
                "min-max maps"}, "map_resolution": sorted(used), "pass_band": f"mean similarity of {s.pairs} seeded "
                "random pairs of maps of different images (trained model)", "targets": "best text on the trained "
                "model" if s.target in ("sidecar", "best") else s.target, "seed": s.seed, "bootstrap": s.bootstrap}
    counts = {"images": len(images), "evaluated": len(images), "skipped": {}}
    if attrib:
        counts["forwards"] = am.forwards  # SMDL image forwards over every step (the cost of the attrib check)
    doc = R.eval_document("sanity", settings, counts,
                          metrics, model={k: v for k, v in (backend.provenance() or {}).items()
                                          if k in ("backend", "model_id", "model_revision", "sha256")},
                          extra={"sanity": checks, "band": band, "tables": {"verdicts": table}, "texts": texts},
                          files=_files(out, per_image="per_image.csv", curves="curves.npz", plot="sanity.png"))
    R.write_eval_json(out, doc)
    return doc


def _plot_sanity(out: Path, checks: dict[str, Any], band: dict[str, float], method: str) -> None:
    """sanity.png: mean SSIM and Spearman per randomisation step with the random-pair band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {c: v for c, v in checks.items() if not c.startswith("prompt")}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for ax, k in zip(axes, ("ssim", "spearman"), strict=True):
        for c, v in curves.items():
            ax.plot(range(len(v["steps"])), v[f"{k}_mean"], marker="o", ms=3, label=c)
        for c, v in checks.items():
            if c.startswith("prompt"):
                ax.scatter([len(max(curves.values(), key=lambda q: len(q["steps"]))["steps"]) - 1 if curves else 1],
                           [v[f"{k}_mean"][-1]], marker="x", label=c)
        if np.isfinite(band[k]):
            ax.axhline(band[k], color="k", ls="--", lw=1, label="random-pair band")
        ax.set_xlabel("randomisation step (0 = trained)")
        ax.set_ylabel(f"{k} to the trained map")
        ax.set_ylim(top=1.05)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"sanity checks: {method}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "sanity.png")
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ compare
_NOT_COMPARED = ("image", "image_stem", "target", "label", "status", "reason", "method", "split", "layout",
                 "target_index", "pred",
                 "k", "n_features", "tuned_t", "otsu_t", "area_tertile")
_SETTING_KEYS_IGNORED = ("store",)


def _read_result(d: Path) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    import csv
    import json

    ej, pc = d / "eval.json", d / "per_image.csv"
    if not ej.is_file() or not pc.is_file():
        raise UsageError(f"{d}: not an eval result folder (needs eval.json and per_image.csv)")
    doc = json.loads(ej.read_text(encoding="utf-8"))
    with open(pc, newline="", encoding="utf-8") as fh:
        rows = {r["image"]: r for r in csv.DictReader(fh)}
    return doc, rows


def _image_key(name: str, method: str | None) -> str:
    """The image part of a map key: cam/attrib names end in _<method>_<target>; drop the method to pair images."""
    if method and f"_{method}_" in name:
        return name.split(f"_{method}_")[0]
    return name


def run_compare(s: Any) -> dict[str, Any]:
    """`eval compare A B`: paired comparison of two results on the images they share (metrics.md §11)."""
    from xaiclip_cli.metrics.bootstrap import check_comparable, paired_comparison

    if len(s.results) != 2:
        raise UsageError("give exactly two result folders: --results A --results B")
    (da, ra), (db, rb) = (_read_result(Path(p)) for p in s.results)
    if da["command"] != db["command"]:
        raise UsageError(f"cannot compare a {da['command']} result with a {db['command']} result")
    check_comparable(da["settings"], db["settings"], ignore=_SETTING_KEYS_IGNORED)

    def keyed(rows: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        # Pair by the explained image and target (map names differ between methods).
        return {f"{r.get('image_stem') or _image_key(k, r.get('method'))}|{r.get('target', '')}": r
                for k, r in rows.items() if r.get("status", "ok") == "ok"}

    ka, kb = keyed(ra), keyed(rb)
    shared = sorted(set(ka) & set(kb))
    if not shared:
        raise UsageError("the two results share no evaluated image")
    out = R.prepare_dir(s.output_dir, s.overwrite, ("compare.json",))
    metrics: dict[str, Any] = {}
    for col in ka[shared[0]]:
        if col in _NOT_COMPARED:
            continue
        try:
            a = np.array([float(ka[k][col]) for k in shared])
            b = np.array([float(kb[k][col]) for k in shared])
        except (ValueError, KeyError):
            continue  # empty (undefined) values or a column only one side has
        metrics[f"{col} (A - B)"] = paired_comparison(a, b, s.bootstrap, s.seed)
    doc = {"schema": R.SCHEMA, "command": "compare", "settings": {"compared": da["command"], **da["settings"]},
           "counts": {"images": len(shared), "evaluated": len(shared), "skipped": {},
                      "only_in_a": len(set(ka) - set(kb)), "only_in_b": len(set(kb) - set(ka))},
           "metrics": metrics, "extra": {"a": str(s.results[0]), "b": str(s.results[1]),
                                         "tables": {"paired": [{"metric": k, "mean_diff": v["mean"],
                                                                "ci_low": v["ci_low"], "ci_high": v["ci_high"],
                                                                "wilcoxon_p": v["wilcoxon_p"], "n": v["n"]}
                                                               for k, v in metrics.items()]}},
           "files": {"dir": str(out), "compare": "compare.json"}}
    import json

    (out / "compare.json").write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")
    return doc
