"""Speed of `eval zeroshot` + `eval probe` on a 17,092-row synthetic store (BloodMNIST size, D=1152), one JSON record.

Reports the seconds of each command (library call, same as the CLI minus start-up) and the store read of the
columns they need (image CLS features + labels + ids of every split) divided by a raw h5py read of the same
columns from the same file (median of paired repeats; target <= 1.5).

Usage: .venv/bin/python benchmarks/eval_speed.py [--rows 17092] [--dim 1152] [--repeats 5] [--layout sharded]
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=17092)
    ap.add_argument("--dim", type=int, default=1152)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layout", default="sharded", choices=["sharded", "single"])
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
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
        "benchmark": "eval_speed", "rows": a.rows, "dim": a.dim, "layout": a.layout, "repeats": a.repeats,
        "build_store_s": round(build_s, 2),
        "raw_h5py_read_s_median": round(statistics.median(raws), 4),
        "store_read_s_median": round(statistics.median(stores), 4),
        "read_ratio_median": round(statistics.median(ratios), 3), "read_ratio_target": 1.5,
        "sklearn_scipy_import_s": round(import_s, 2), "zeroshot_s": round(zs_s, 2), "probe_global_s": round(pr_s, 2), "probe_concepts_s": round(pc_s, 2),
        "torch_threads": 1,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
