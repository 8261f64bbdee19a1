"""Benchmark (store.md §10.3): `db sample` library call vs a raw h5py read of the same row on an open handle.

Random rows, hot cache; prints one JSON record with median/p95 of both and the ratio (target <= 1.5x raw).
Builds a synthetic store with plain h5py (layout of store.md §3.1) unless --h5 names an existing one.
Usage: .venv/bin/python benchmarks/db_sample_latency.py [--rows 128] [--layout single|sharded] [--h5 PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xaiclip_cli.store.reader import StoreReader  # noqa: E402


def build(path: Path, n: int, d: int, t: int, layout: str, part_rows: int) -> None:
    """A complete store with random features: single file, or parts + VDS index."""
    rng = np.random.default_rng(0)
    sdt = h5py.string_dtype("utf-8")

    def fill(g: h5py.Group, a: int, b: int) -> None:
        cls = rng.normal(size=(b - a, d)).astype(np.float32)
        g.create_dataset("image_features", data=cls / np.linalg.norm(cls, axis=1, keepdims=True),
                         chunks=(min(64, b - a), d))
        tok = g.create_dataset("image_token_features", (b - a, t, d), np.float16, chunks=(1, t, d))
        for i in range(b - a):
            tok[i] = rng.normal(size=(t, d)).astype(np.float16)

    def columns(g: h5py.Group) -> None:
        g["ids"] = np.arange(n, dtype=np.int64)
        g["labels"] = rng.integers(0, 8, n).astype(np.int64)
        g.create_dataset("split", data=["train"] * n, dtype=sdt)
        g["written"] = np.ones(n, bool)

    with h5py.File(path, "w") as f:
        if layout == "single":
            fill(f, 0, n)
        else:
            parts = path.with_name(path.stem + ".parts")
            parts.mkdir(exist_ok=True)
            cl, tl = h5py.VirtualLayout((n, d), np.float32), h5py.VirtualLayout((n, t, d), np.float16)
            for k, a in enumerate(range(0, n, part_rows)):
                b = min(n, a + part_rows)
                with h5py.File(parts / f"part-{k:05d}.h5", "w") as p:
                    fill(p, a, b)
                rel = f"{parts.name}/part-{k:05d}.h5"
                cl[a:b] = h5py.VirtualSource(rel, "image_features", shape=(b - a, d))
                tl[a:b] = h5py.VirtualSource(rel, "image_token_features", shape=(b - a, t, d))
            f.create_virtual_dataset("image_features", cl, fillvalue=np.nan)
            f.create_virtual_dataset("image_token_features", tl, fillvalue=np.nan)
        columns(f)
        f.attrs.update({"schema_version": "xaiclip-store/1", "D": d, "T_img": t, "split_counts": "{}"})
        f.create_group("templates")


def raw_sample(f: h5py.File, i: int) -> tuple:
    """The seed's access_sample_by_index body on an already open handle."""
    img = f["image_features"][i]
    tok = f["image_token_features"][i]
    sid = int(f["ids"][i])
    label = int(f["labels"][i])
    s = f["split"][i]
    return img, tok, sid, label, s.decode("utf-8") if isinstance(s, bytes) else str(s)


def raw_sample_ds(ds: dict, i: int) -> tuple:
    """Same reads with the dataset objects looked up once (the fastest plain h5py form)."""
    s = ds["split"][i]
    return (ds["image_features"][i], ds["image_token_features"][i], int(ds["ids"][i]), int(ds["labels"][i]),
            s.decode("utf-8") if isinstance(s, bytes) else str(s))


def stats(ms: list[float]) -> dict[str, float]:
    """Median and p95 in milliseconds."""
    return {"median_ms": round(statistics.median(ms), 4), "p95_ms": round(float(np.percentile(ms, 95)), 4)}


def main() -> None:
    """Build (or open) a store, time both readers on the same random rows, print one JSON record."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--h5", type=Path, default=None)
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--d", type=int, default=1152)
    ap.add_argument("--t", type=int, default=729)
    ap.add_argument("--layout", choices=["single", "sharded"], default="single")
    ap.add_argument("--part-rows", type=int, default=32)
    ap.add_argument("--reads", type=int, default=400)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="xaiclip-bench-")
    path = args.h5 or Path(tmp.name) / "store.h5"
    if args.h5 is None:
        build(path, args.rows, args.d, args.t, args.layout, args.part_rows)
    reader = StoreReader(path)
    n = reader.n_rows
    rows = np.random.default_rng(1).integers(0, n, args.reads).tolist()
    with h5py.File(path, "r") as f:
        for i in range(n):  # hot cache: every row read once by both
            raw_sample(f, i)
            reader.sample(i)
        ds = {k: f[k] for k in ("image_features", "image_token_features", "ids", "labels", "split")}
        times: dict[str, list[float]] = {"raw": [], "raw_ds": [], "lib": []}
        for k, i in enumerate(rows):
            # Rotate which goes first so none always benefits from another's cache warm-up.
            order = [("raw", lambda i=i: raw_sample(f, i)), ("raw_ds", lambda i=i: raw_sample_ds(ds, i)),
                     ("lib", lambda i=i: reader.sample(i))]
            for name, fn in order[k % 3:] + order[:k % 3]:
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
        a, b = raw_sample(f, rows[0]), reader.sample(rows[0])
        assert np.array_equal(a[1], b.image_token_feature) and a[2] == b.id
    reader.close()
    raw, raw_ds, lib = stats(times["raw"]), stats(times["raw_ds"]), stats(times["lib"])
    record = {
        "benchmark": "db_sample_latency",
        "machine": platform.machine(), "python": platform.python_version(), "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version, "numpy": np.__version__,
        "layout": args.layout if args.h5 is None else "given", "rows": n, "D": args.d, "T": args.t,
        "reads": len(rows), "raw": raw, "raw_cached_datasets": raw_ds, "library": lib,
        "ratio_median": round(lib["median_ms"] / raw["median_ms"], 3),
        "ratio_p95": round(lib["p95_ms"] / raw["p95_ms"], 3),
        "ratio_median_vs_cached_datasets": round(lib["median_ms"] / raw_ds["median_ms"], 3), "target_ratio": 1.5,
    }
    print(json.dumps(record))
    tmp.cleanup()


if __name__ == "__main__":
    main()
