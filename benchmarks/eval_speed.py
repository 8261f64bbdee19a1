"""Speed of `eval zeroshot`/`probe` (17,092-row synthetic store, D=1152) and of `eval faithfulness`, one JSON record.

Store part: the seconds of each command (library call, same as the CLI minus start-up) and the store read of the
columns they need (image CLS features + labels + ids of every split) divided by a raw h5py read of the same
columns from the same file (median of paired repeats; target <= 1.5).

Faithfulness part: images forwarded per second by `eval faithfulness` (50 steps, insertion + deletion) divided by
a bare batched forward (encode_image + score) of the same model, batch size and number of images on the same
device, timed around each run (median of the paired repeats). The headline and target (>= 0.9) is
``faithfulness_ratio_median``: the WHOLE command (planning, image loading, perturbation, scoring, logs, eval.json,
per_image.csv, curves.npz, the PNG) minus only the model load; ``loop_ratio_median`` (the perturb-and-score loop
alone) is a diagnostic. The bare reference of a repeat is the mean of a bare run right before it (the previous
repeat's forward count; none before the first) and one right after. ``faithfulness_runs`` lists each repeat's
seconds: wall, model reload (subtracted), loop, model forwards inside the command, bare before and after.

Usage: .venv/bin/python benchmarks/eval_speed.py [--part store|faithfulness|all] [--rows 17092] [--dim 1152]
       [--repeats 5] [--layout sharded] [--model toy-cnn] [--images 8] [--batch 128] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def class_structure(path: Path, truth, dim: int) -> None:
    """Give the random CLS rows a class structure (unit(0.35·μ_label + noise)), as real features have, so the probe
    is timed on a separable problem; rewritten in place in each part (or the single file)."""
    import h5py
    import numpy as np

    rng = np.random.default_rng(1)
    mu = rng.normal(size=(int(truth.labels.max()) + 1, dim)) / np.sqrt(dim)
    x = 0.35 * mu[truth.labels] + rng.normal(size=(truth.n, dim)) / np.sqrt(dim)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    files = truth.parts or [path]
    for f in files:
        with h5py.File(f, "a") as h:
            a = int(h.attrs.get("row_start", 0))
            b = int(h.attrs.get("row_stop", truth.n))
            h["image_features"][...] = x[a:b]


def raw_read(path: Path) -> float:
    """Seconds to read CLS rows, labels and ids of each split with plain h5py (split mask from the split column)."""
    import h5py
    import numpy as np

    t = time.perf_counter()
    with h5py.File(path, "r") as f:
        split = np.array([s.decode() if isinstance(s, bytes) else s for s in f["split"][()]], dtype=object)
        written = f["written"][()]
        labels, ids = f["labels"][()], f["ids"][()]
        ds = f["image_features"]
        for s in ("train", "val", "test"):
            rows = np.flatnonzero(written & (split == s))
            _ = ds[rows[0]:rows[-1] + 1][rows - rows[0]], labels[rows], ids[rows]
    return time.perf_counter() - t


def store_read(path: Path) -> float:
    """Seconds for the eval library's read of the same columns (StoreReader: checks, VDS sources, fill guard)."""
    from xaiclip_cli.metrics.zeroshot import load_library

    t = time.perf_counter()
    load_library(path)
    return time.perf_counter() - t


def faithfulness_speed(model: str, n_images: int, batch: int, device: str, repeats: int) -> dict:
    """Paired repeats of `eval faithfulness` and a bare batched forward of the same number of images."""
    import json as _json

    import numpy as np
    import torch

    from xaiclip_cli.config.eval import EvalSettings
    from xaiclip_cli.metrics.commands import run_faithfulness
    from xaiclip_cli.metrics.scoring import TargetScorer
    from xaiclip_cli.models.registry import load_backend

    texts = ["a lymphocyte", "a neutrophil", "an eosinophil", "a basophil", "a monocyte"]
    t = time.perf_counter()
    be = load_backend("toy", model, device=device)
    load_s = time.perf_counter() - t
    sc = TargetScorer(be, texts, "softmax")
    ratios, evals, bares, loops, loop_ratios, runs = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as td:
        d = Path(td) / "maps"
        d.mkdir()
        rng = np.random.default_rng(0)
        for i in range(n_images):
            np.save(d / f"test_{i:05d}.npy", rng.random((8, 8)))
            (d / f"test_{i:05d}.json").write_text(_json.dumps({
                "image": {"dataset": "toycells", "split": "test", "index": i},
                "texts": [{"name": x, "prompt": x} for x in texts], "target_index": i % 5}))
        s = EvalSettings(backend="toy", model=model, device=device, threads=1, maps=[d], steps=50, batch_size=batch,
                         output_dir=Path(td) / "out", overwrite=True, bootstrap=0)
        x = torch.randn(batch, 3, *sc.size, device=be.device)

        def bare(n: int) -> float:
            """Seconds of a bare batched forward of n images (the same batch size)."""
            if be.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            done = 0
            while done < n:
                b = min(batch, n - done)
                sc.scores(x[:b])
                done += b
            if be.device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t

        fw = 0
        for _ in range(repeats):
            # the reference brackets the run (right before, with the previous run's count, and right after), so a
            # machine whose speed drifts during the repeat biases neither side
            before = bare(fw) if fw else None
            t = time.perf_counter()
            doc = run_faithfulness(s)
            wall = time.perf_counter() - t
            fw = int(doc["counts"]["forwards"])
            # the command loads the model itself: take that out (measured on the same, now warm, files)
            t = time.perf_counter()
            load_backend("toy", model, device=device)
            reload_s = time.perf_counter() - t
            timing = doc["extra"]["timing"]
            after = bare(fw)
            bare_s = after if before is None else (before + after) / 2
            eval_ips = fw / max(wall - reload_s, 1e-9)
            loop_ips = fw / timing["loop_s"]
            bare_ips = fw / bare_s
            loops.append(loop_ips)
            evals.append(eval_ips)
            bares.append(bare_ips)
            ratios.append(eval_ips / bare_ips)
            loop_ratios.append(loop_ips / bare_ips)
            runs.append({"wall_s": round(wall, 3), "reload_s": round(reload_s, 3), "loop_s": round(timing["loop_s"], 3),
                         "model_s": round(timing["model_s"], 3),
                         "bare_before_s": None if before is None else round(before, 3), "bare_after_s": round(after, 3),
                         "ratio": round(ratios[-1], 3), "loop_ratio": round(loop_ratios[-1], 3)})
    med = round(statistics.median(ratios), 3)
    return {"faithfulness_ratio_median": med, "faithfulness_ratio_target": 0.9,
            "faithfulness_target_met": med >= 0.9,
            "faithfulness_model": model, "faithfulness_device": str(be.device), "faithfulness_images": n_images,
            "faithfulness_steps": 50, "faithfulness_batch": batch, "forwards_per_run": fw,
            "model_load_s": round(load_s, 2), "eval_images_per_s_median": round(statistics.median(evals), 1),
            "bare_forward_images_per_s_median": round(statistics.median(bares), 1),
            "loop_images_per_s_median": round(statistics.median(loops), 1),
            "loop_ratio_median": round(statistics.median(loop_ratios), 3), "faithfulness_runs": runs,
            "note": "faithfulness_ratio_median is the target ratio: whole command minus model load (dataset open, "
                    "outputs, PNG included) / bare forward of the same images, paired per repeat; loop_ratio: the "
                    "perturb-and-score loop only (diagnostic)"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=17092)
    ap.add_argument("--dim", type=int, default=1152)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layout", default="sharded", choices=["sharded", "single"])
    ap.add_argument("--part", default="all", choices=["store", "faithfulness", "all"])
    ap.add_argument("--model", default="toy-cnn")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    record: dict = {"benchmark": "eval_speed", "torch_threads": 1}
    if a.part in ("faithfulness", "all"):
        record.update(faithfulness_speed(a.model, a.images, a.batch, a.device, a.repeats))
    if a.part == "faithfulness":
        print(json.dumps(record))
        return 0
    from tests.store.test_reader_fixtures import build_store
    from xaiclip_cli.metrics.commands import run_probe, run_zeroshot

    with tempfile.TemporaryDirectory() as td:
        p = Path(td) / "bench.h5"
        n_tr, n_va = int(a.rows * 0.7), int(a.rows * 0.1)
        t0 = time.perf_counter()
        truth = build_store(p, a.layout, split_sizes=(n_tr, n_va, a.rows - n_tr - n_va), d=a.dim, t=1,
                            part_rows=1024, seed=0)
        class_structure(p, truth, a.dim)
        build_s = time.perf_counter() - t0
        t = time.perf_counter()
        import scipy.stats  # noqa: F401
        import sklearn.linear_model  # noqa: F401
        import sklearn.metrics  # noqa: F401

        import_s = time.perf_counter() - t
        raw_read(p)
        store_read(p)  # warm the page cache for both
        ratios, raws, stores = [], [], []
        for _ in range(a.repeats):
            r, s = raw_read(p), store_read(p)
            raws.append(r)
            stores.append(s)
            ratios.append(s / r)
        common = dict(h5=p, store_model=None, family="auto", overwrite=True, bootstrap=1000, seed=0)
        t = time.perf_counter()
        run_zeroshot(SimpleNamespace(**common, splits=["train", "val", "test"], output_dir=Path(td) / "zs"))
        zs_s = time.perf_counter() - t
        t = time.perf_counter()
        run_probe(SimpleNamespace(**common, features="global", output_dir=Path(td) / "pr"))
        pr_s = time.perf_counter() - t
        t = time.perf_counter()
        run_probe(SimpleNamespace(**common, features="concepts", output_dir=Path(td) / "pc"))
        pc_s = time.perf_counter() - t
    print(json.dumps({
        **record, "rows": a.rows, "dim": a.dim, "layout": a.layout, "repeats": a.repeats,
        "build_store_s": round(build_s, 2),
        "raw_h5py_read_s_median": round(statistics.median(raws), 4),
        "store_read_s_median": round(statistics.median(stores), 4),
        "read_ratio_median": round(statistics.median(ratios), 3), "read_ratio_target": 1.5,
        "sklearn_scipy_import_s": round(import_s, 2), "zeroshot_s": round(zs_s, 2),
        "probe_global_s": round(pr_s, 2), "probe_concepts_s": round(pc_s, 2),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
