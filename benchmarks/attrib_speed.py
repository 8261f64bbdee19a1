"""SMDL attribution speed and fast-mode quality on CPU, printed as one JSON record (+ results JSON and Markdown).

Part A (smdl.md §14–15): the tiny CLIP of the parity test (transformers CLIPModel from a config, s = 10) on the
three scikit-image images at 224 px, SLICO region size 30 (≈49 regions): exact mode vs the reference-style oracle
``tests/oracle/smdl_ref.py`` on the same model, images, regions and threads (ratio, identical results, model-time
share), then every fast mode against exact. Part B: the shipped toy-vit on toy-cells test images ``--start`` ..
``--start + --images − 1`` (default 0..79; 64 px, ``--region-size auto`` → ≈49 regions), every mode against exact.
Per mode: s/image, forwards, model share, mean insertion/deletion AUC (recorded curves, metrics.md §1) with a paired
bootstrap 95 % interval of the relative difference to exact (images resampled, PCG64, B = 1000), Kendall τ of the
orders vs exact (scipy), and lazy's full re-evaluations per image (periodic + stale-triggered).

Usage: .venv/bin/python benchmarks/attrib_speed.py [--images 80] [--start 0] [--threads 1] [--skip-oracle]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "exact": {"search": "exact"},
    "lazy": {"search": "lazy"},
    "bidirectional": {"search": "bidirectional"},
    "bidirectional+lazy": {"search": "bidirectional", "lazy": True},
}
CURVES = ("confidence", "effectiveness", "consistency", "collaboration", "objective")


def _auc(r):
    from xaiclip_cli.explain.smdl import recorded_auc

    return recorded_auc({k: getattr(r, k) for k in ("consistency", "collaboration", "area_ins", "area_del")})


def _tau(order_a, order_b) -> float:
    """Kendall τ between the positions two orders give each region."""
    import numpy as np
    from scipy.stats import kendalltau

    pa = np.empty(len(order_a), np.int64)
    pb = np.empty(len(order_b), np.int64)
    ids = {int(v): i for i, v in enumerate(sorted(map(int, order_a)))}
    pa[[ids[int(v)] for v in order_a]] = np.arange(len(order_a))
    pb[[ids[int(v)] for v in order_b]] = np.arange(len(order_b))
    return float(kendalltau(pa, pb)[0])


def _run_modes(items, scorer, modes):
    """items: (x, fill, masks, target, nonblack). Returns per-mode summaries vs exact."""
    import numpy as np

    from xaiclip_cli.explain.smdl import SmdlConfig, attribute

    per = {m: [] for m in modes}
    for x, b, masks, target, nb in items:
        ex = None
        for m in modes:
            r = attribute(scorer, x, b, masks, target, SmdlConfig(**MODES[m]), nb)
            if m == "exact":
                ex = r
            ins, dele = _auc(r)
            per[m].append({"seconds": r.seconds, "model_seconds": r.model_seconds, "forwards": r.forwards,
                           "ins": ins, "del": dele, "tau": _tau(ex.order, r.order) if ex is not None else None,
                           "refreshes": r.extra.get("lazy_refreshes"), "triggers": r.extra.get("lazy_stale_triggers")})
    from xaiclip_cli.metrics.bootstrap import resample_indices

    out = {}
    idx = resample_indices(len(per["exact"]), 1000, 0)
    ex_ins_v = np.asarray([d["ins"] for d in per["exact"]])
    ex_del_v = np.asarray([d["del"] for d in per["exact"]])

    def rel_ci(vals, ref):
        # Paired: the same resampled images for the mode and exact; ratio of means − 1.
        r = np.asarray(vals)[idx].mean(1) / ref[idx].mean(1) - 1.0
        return [float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975))]

    ex_ins = float(np.mean([d["ins"] for d in per["exact"]]))
    ex_del = float(np.mean([d["del"] for d in per["exact"]]))
    ex_fw = float(np.mean([d["forwards"] for d in per["exact"]]))
    for m, rows in per.items():
        ins = float(np.mean([d["ins"] for d in rows]))
        dele = float(np.mean([d["del"] for d in rows]))
        fw = float(np.mean([d["forwards"] for d in rows]))
        out[m] = {
            "images": len(rows),
            "s_per_image_median": statistics.median(d["seconds"] for d in rows),
            "forwards_mean": fw,
            "forwards_vs_exact": fw / ex_fw,
            "model_share": sum(d["model_seconds"] for d in rows) / sum(d["seconds"] for d in rows),
            "insertion_auc": ins,
            "deletion_auc": dele,
            "insertion_rel_vs_exact": ins / ex_ins - 1.0,
            "deletion_rel_vs_exact": dele / ex_del - 1.0,
            "kendall_tau_mean": float(np.mean([d["tau"] for d in rows])) if rows[0]["tau"] is not None else None,
            "insertion_rel_ci95": rel_ci([d["ins"] for d in rows], ex_ins_v),
            "deletion_rel_ci95": rel_ci([d["del"] for d in rows], ex_del_v),
        }
        if rows[0]["refreshes"] is not None:
            out[m]["lazy_refreshes_mean"] = float(np.mean([d["refreshes"] for d in rows]))
            out[m]["lazy_stale_triggers_mean"] = float(np.mean([d["triggers"] for d in rows]))
    return out


def part_a(args):
    """Tiny CLIP on the three scikit-image images: oracle vs exact, then the fast modes."""
    import cv2
    import numpy as np
    import skimage.data as sd
    import torch

    from tests.explain.smdl.tiny_clip import TinyHFClip, random_prototypes, tiny_clip_model, unit_image_features
    from tests.oracle.smdl_ref import RefSMDL, ref_regions
    from xaiclip_cli.explain.smdl import ClipScorer, SmdlConfig, attribute, divide, elements, prepare

    model = tiny_clip_model()
    protos = random_prototypes(model)
    backend = TinyHFClip(model)
    scorer = ClipScorer(backend, protos, 10.0)
    items, oracle_rows = [], []
    for name in ("chelsea", "immunohistochemistry", "retina"):
        rgb = getattr(sd, name)()
        bgr = cv2.resize(np.ascontiguousarray(rgb[:, :, ::-1]), (224, 224), interpolation=cv2.INTER_LINEAR)
        labels = divide(bgr, "slico", region_size=args.region_size)
        ids, masks = elements(labels)
        x, b = prepare(backend, bgr)
        target = int(scorer.probs(x[None])[0].argmax())
        nb = bgr.astype(np.int32).sum(2) != 0
        mt = torch.from_numpy(masks)
        items.append((x, b, mt, target, nb))
        if args.skip_oracle:
            continue
        r = attribute(scorer, x, b, mt, target, SmdlConfig(), nb)
        ref = RefSMDL(unit_image_features(model), protos, 10.0)
        t0 = time.perf_counter()
        o = ref.exact(ref_regions(bgr, labels, ids), target)
        t_ref = time.perf_counter() - t0
        diff = max(float(np.abs(getattr(r, k) - np.asarray(o[k], np.float32)).max()) for k in CURVES)
        oracle_rows.append({"image": name, "regions": int(len(ids)), "exact_s": r.seconds, "oracle_s": t_ref,
                            "ratio": t_ref / r.seconds, "same_order": list(map(int, r.order)) == o["order"],
                            "max_abs_curve_diff": diff, "forwards": r.forwards, "oracle_forwards": o["forwards"],
                            "exact_model_share": r.model_seconds / r.seconds,
                            "oracle_model_share": ref.model_seconds / t_ref})
    res = {"regions_mean": float(np.mean([int(m.shape[0]) for _, _, m, _, _ in items])),
           "modes": _run_modes(items, scorer, list(MODES))}
    if oracle_rows:
        res["oracle"] = {
            "per_image": oracle_rows,
            "ratio_median": statistics.median(d["ratio"] for d in oracle_rows),
            "ratio_total": sum(d["oracle_s"] for d in oracle_rows) / sum(d["exact_s"] for d in oracle_rows),
            "identical": all(d["same_order"] and d["max_abs_curve_diff"] == 0.0 for d in oracle_rows),
        }
    return res


def part_b(args):
    """toy-vit on toy-cells test images: every mode against exact."""
    import numpy as np
    import torch

    from xaiclip_cli.data.prompts import load_prompt_set
    from xaiclip_cli.data.refs import open_source
    from xaiclip_cli.explain.smdl import ClipScorer, divide, elements, prepare, text_prototypes
    from xaiclip_cli.models.registry import load_backend

    backend = load_backend("toy", args.model, device="cpu")
    ps = load_prompt_set("toycells")
    protos = text_prototypes(backend, [[t.format(lab) for t in ps.label_templates] for lab in ps.labels])
    scorer = ClipScorer(backend, protos, backend.logit_scale)
    src = open_source("toycells")
    items, counts = [], []
    for i in range(args.start, args.start + args.images):
        s = src.get("test", i)
        bgr = np.ascontiguousarray(s.image[:, :, ::-1])
        labels = divide(bgr, "slico")
        ids, masks = elements(labels)
        counts.append(len(ids))
        x, b = prepare(backend, bgr)
        items.append((x, b, torch.from_numpy(masks), int(s.label), bgr.astype(np.int32).sum(2) != 0))
    return {"model": args.model, "first_image": args.start, "regions_mean": float(np.mean(counts)),
            "regions_min": int(min(counts)),
            "regions_max": int(max(counts)), "modes": _run_modes(items, scorer, list(MODES))}


def markdown(rec) -> str:
    """A Markdown table of the record."""
    lines = [f"# SMDL attribution speed (CPU)\n\n{rec['hardware']}; torch {rec['versions']['torch']}, "
             f"{rec['threads']} thread(s). Generated by `benchmarks/attrib_speed.py`.\n"]
    a = rec["tiny_clip"]
    if "oracle" in a:
        o = a["oracle"]
        lines.append(f"Exact vs the reference-style oracle (tiny CLIP, 3 scikit-image images, "
                     f"{a['regions_mean']:.0f} regions): **{o['ratio_median']:.2f}× faster** (median; total "
                     f"{o['ratio_total']:.2f}×), identical results: {o['identical']}.\n")
        lines.append("| image | regions | oracle s | exact s | ratio | same order | max abs diff | forwards | "
                     "model share exact | model share oracle |")
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for d in o["per_image"]:
            lines.append(f"| {d['image']} | {d['regions']} | {d['oracle_s']:.2f} | {d['exact_s']:.2f} | "
                         f"{d['ratio']:.2f} | {d['same_order']} | {d['max_abs_curve_diff']:.1e} | {d['forwards']} | "
                         f"{d['exact_model_share']:.0%} | {d['oracle_model_share']:.0%} |")
        lines.append("")
    for key, title in (("tiny_clip", "tiny CLIP, 3 scikit-image images"), ("toy", "toy-vit, toy cells")):
        part = rec[key]
        n_img = part["modes"]["exact"]["images"]
        first = (f", test images {part['first_image']}–{part['first_image'] + n_img - 1}" if "first_image" in part
                 else "")
        lines.append(f"### {title} ({part['modes']['exact']['images']} images{first}, "
                     f"{part['regions_mean']:.1f} regions)\n")
        lines.append("| mode | s/image (median) | forwards | ÷ exact | model share | insertion AUC | Δ rel [95 % CI] | "
                     "deletion AUC | Δ rel [95 % CI] | Kendall τ |")
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for m, d in part["modes"].items():
            ci_i, ci_d = d["insertion_rel_ci95"], d["deletion_rel_ci95"]
            lines.append(f"| {m} | {d['s_per_image_median']:.2f} | {d['forwards_mean']:.0f} | "
                         f"{d['forwards_vs_exact']:.3f} | {d['model_share']:.0%} | {d['insertion_auc']:.4f} | "
                         f"{d['insertion_rel_vs_exact']:+.2%} [{ci_i[0]:+.1%}, {ci_i[1]:+.1%}] | "
                         f"{d['deletion_auc']:.4f} | {d['deletion_rel_vs_exact']:+.2%} "
                         f"[{ci_d[0]:+.1%}, {ci_d[1]:+.1%}] | "
                         f"{d['kendall_tau_mean']:.3f} |")
        lines.append("")
    lines.append(f"Peak RSS {rec['peak_rss_mb']:.0f} MB.\n")
    return "\n".join(lines)


def main() -> int:
    """Run both parts, write the results JSON + Markdown, print one JSON record."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=80, help="toy-cells test images (≥ 20 for the report)")
    ap.add_argument("--start", type=int, default=0, help="first toy-cells test image")
    ap.add_argument("--model", default="toy-vit")
    ap.add_argument("--region-size", type=int, default=30, help="SLICO region size of part A (30 → ≈49 regions)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-oracle", action="store_true", help="skip the (slow) reference-style oracle")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "attrib_cpu.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    rec = {"benchmark": "attrib_speed", "threads": args.threads,
           "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "versions": {"python": platform.python_version(), "torch": torch.__version__},
           "tiny_clip": part_a(args), "toy": part_b(args)}
    rec["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rec["wall_s"] = time.perf_counter() - t0
    a, t = rec["tiny_clip"], rec["toy"]
    rec["summary"] = {
        "exact_vs_oracle_ratio": a.get("oracle", {}).get("ratio_median"),
        "exact_identical": a.get("oracle", {}).get("identical"),
        "exact_model_share_tiny_clip": a["modes"]["exact"]["model_share"],
        "lazy_forwards_vs_exact_toy": t["modes"]["lazy"]["forwards_vs_exact"],
        "lazy_insertion_rel_toy": t["modes"]["lazy"]["insertion_rel_vs_exact"],
        "lazy_forwards_vs_exact_tiny_clip": a["modes"]["lazy"]["forwards_vs_exact"],
        "lazy_insertion_rel_tiny_clip": a["modes"]["lazy"]["insertion_rel_vs_exact"],
        "lazy_insertion_rel_ci95_toy": t["modes"]["lazy"]["insertion_rel_ci95"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=1))
    out.with_suffix(".md").write_text(markdown(rec))
    print(json.dumps(rec["summary"] | {"out": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
