"""Energy-based pointing game of every CAM method on toy cells (ground-truth masks), printed as one JSON record.

For each test image the map explains the true class's caption (``--score``: logit by default); the score is the
fraction of the map's energy inside the mask (Wang et al., Score-CAM §5.2; metrics.md §5: the ReLU'd map, upsampled
and min-max scaled, i.e. the map `cam run` saves). ``--mask cells`` scores against the whole target cell
(``test_masks``),
``--mask nuclei`` against its nucleus plus granules (``test_nuclei``), ``--mask both`` reports both.
The reference measured in the same run is the mask-area baseline (a uniform map scores the mask's area
fraction), so ``ratio_vs_area`` > 1 means better than chance.

Usage: .venv/bin/python benchmarks/cam_pointing_game.py [--model toy-cnn] [--images 50] [--mask cells|nuclei|both]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = "gradcam,hirescam,layercam,xgradcam,gradcam++,eigencam,scorecam,gscorecam,legrad"


def energy_inside(maps, masks):
    """Σ(map·mask)/Σ map per image (maps already ReLU'd, same size as masks); 0 for an all-zero map."""
    import numpy as np

    num = (maps * masks).reshape(len(maps), -1).sum(1)
    den = maps.reshape(len(maps), -1).sum(1)
    return np.where(den > 0, num / np.maximum(den, 1e-12), 0.0)


def main() -> int:
    """Run the pointing game and print one JSON record."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="toy")
    ap.add_argument("--model", default="toy-cnn")
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--align", choices=["receptive-field", "half-pixel"], default="receptive-field",
                    help="where CNN map cells land (as `cam run --align`); token grids are half-pixel either way")
    ap.add_argument("--score", choices=["cosine", "logit", "softmax", "dot"], default="logit",
                    help="the score explained (softmax over the five class captions is the contrastive one)")
    ap.add_argument("--mask", choices=["cells", "nuclei", "both"], default="cells",
                    help="ground truth: the whole target cell, its nucleus + granules, or both")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch
    import torch.nn.functional as F

    from xaiclip_cli.data.toycells import TOYCELLS_CAPTIONS, TOYCELLS_CLASSES, ToyCellsSource
    from xaiclip_cli.errors import UsageError, XaiclipError
    from xaiclip_cli.explain.api import CamRunner
    from xaiclip_cli.explain.cam.engine import compute_maps, minmax, upsample_maps
    from xaiclip_cli.models.registry import load_backend

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        backend = load_backend(args.backend, args.model, device="cpu")
    except (XaiclipError, ImportError) as exc:
        print(json.dumps({"benchmark": "cam_pointing_game", "error": f"cannot load {args.model}: {exc}"}))
        return 1
    src = ToyCellsSource()
    n = min(args.images, src.split_sizes()["test"])
    samples = src.get_many("test", list(range(n)))
    images = [s.image for s in samples]
    masks = np.stack([(s.mask > 0).astype(np.float32) for s in samples])
    with np.load(src.path) as z:
        nuclei = (z["test_nuclei"][:n] > 0).astype(np.float32)
    truths = {"cells": masks, "nuclei": nuclei}
    if args.mask != "both":
        truths = {args.mask: truths[args.mask]}
    labels = torch.tensor([s.label for s in samples])
    texts = {c: TOYCELLS_CAPTIONS[c][0] for c in TOYCELLS_CLASSES}
    runner = CamRunner(backend, texts, score=args.score, align=args.align)
    pixels = runner.pixels(images)
    layer = runner.resolve_layer(pixels)
    with torch.no_grad():
        logits = backend.score(backend.encode_image(pixels)[0], runner.text_global, "logit")
    accuracy = float((logits.argmax(1) == labels).float().mean())
    areas = {k: v.reshape(n, -1).mean(1) for k, v in truths.items()}
    rows = []
    for method in [m for m in args.methods.split(",") if m]:
        t0 = time.perf_counter()
        maps = []
        try:  # a method the tower does not support (legrad on a CNN, dot without the raw embedding) is reported
            compute_maps(backend, pixels[:1], runner.text_global, labels[:1], method, layer, args.score)
        except UsageError as exc:
            rows.append({"method": method, "skipped": str(exc)})
            continue
        for lo in range(0, n, args.batch):
            hi = min(lo + args.batch, n)
            bm = compute_maps(backend, pixels[lo:hi], runner.text_global, labels[lo:hi], method, layer, args.score,
                              topk=300, score_batch=64)
            size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
            up = upsample_maps(bm.raw, size, geometry=runner.geometry(layer, size))
            up = F.interpolate(up[:, None], size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            # metrics.md §5: the energy game scores the min-max map (what `cam run` saves); all-zero maps stay 0.
            maps.append(minmax(up.clamp(min=0)).cpu().numpy())
        m = np.concatenate(maps)
        peak = m.reshape(n, -1).argmax(1)
        row: dict = {"method": method}
        for kind, truth in truths.items():
            # Keys of the cell mask keep their historical names; the nuclei mask's get a suffix.
            sfx = "" if kind == "cells" else "_nuclei"
            e = energy_inside(m, truth)
            area = areas[kind]
            row.update({f"energy_in_mask{sfx}": round(float(e.mean()), 4),
                        f"ratio_vs_area{sfx}": round(float(e.mean() / area.mean()), 3),
                        f"beats_area_frac{sfx}": round(float((e > area).mean()), 3),
                        f"pointing_hit{sfx}": round(float(truth.reshape(n, -1)[np.arange(n), peak].mean()), 3)})
        row.update({"all_zero": int((m.reshape(n, -1).max(1) <= 0).sum()),
                    "img_s": round(n / (time.perf_counter() - t0), 2)})
        rows.append(row)
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps({
        "benchmark": "cam_pointing_game", "backend": args.backend, "model": args.model, "layer": layer.name,
        "layout": layer.layout, "images": n, "zero_shot_accuracy": round(accuracy, 3),
        "mask": args.mask, "score": args.score, "align": args.align,
        **{("mask_area_baseline" if k == "cells" else f"mask_area_baseline_{k}"): round(float(a.mean()), 4)
           for k, a in areas.items()}, "threads": torch.get_num_threads(), "methods": rows,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
