"""Benchmark: MB/s of the production store writer (RowWriter.commit via the writer thread) on synthetic fp16 tokens.

Reference (store.md §9): 936 MB/s for (1,T,D) uncompressed chunks with raw h5py; target >= 500 MB/s and >= 0.8x
the raw h5py writes of the same rows measured in this run. Each repeat alternates writer and raw runs; the record
holds the medians. torch.set_num_threads(1). Prints one JSON record.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from xaiclip_cli.store import layout as L
from xaiclip_cli.store.writer import Batch, RowWriter, create_row_datasets, writer_thread


def _raw_h5py(path: Path, tokens: np.ndarray, batch: int) -> float:
    """Reference: plain h5py writes of the same rows into (1,T,D) chunks (tokens only, no crash-safe commit)."""
    n, t, d = tokens.shape
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=(n, t, d), dtype=np.float16, chunks=(1, t, d))
        for a in range(0, n, batch):
            ds[a:a + batch] = tokens[a:a + batch]
        f.flush()
    secs = time.perf_counter() - t0
    path.unlink()
    return secs


def _writer(path: Path, tokens: np.ndarray, cls: np.ndarray, batch: int) -> float:
    """The production path: preallocated part file, writer thread, crash-safe commit per batch."""
    n, t, d = tokens.shape
    with h5py.File(path, "w") as f:
        create_row_datasets(f, n, d, t, "float32", True)
    t0 = time.perf_counter()
    with h5py.File(path, "r+") as f, writer_thread(3) as w:
        rw = RowWriter(f)
        for a in range(0, n, batch):
            b = min(a + batch, n)
            rows = np.arange(a, b)
            bt = Batch(a, b, cls[a:b], tokens[a:b], rows, rows % 8, np.zeros(b - a, np.uint8),
                       rows.astype(np.int32), np.zeros((b - a, L.IMAGE_HASH_BYTES), np.uint8))
            w.submit(lambda bt=bt: rw.commit(bt) and None)
        w.drain()
    secs = time.perf_counter() - t0
    path.unlink()
    return secs


def main() -> None:
    """Write N synthetic rows through the production writer and through raw h5py; print median MB/s of both."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=729)
    ap.add_argument("--dim", type=int, default=1152)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # the writer itself does not need torch
        pass
    n, t, d, bs = args.rows, args.tokens, args.dim, args.batch
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((n, t, d), dtype=np.float32).astype(np.float16)
    cls = rng.standard_normal((n, d), dtype=np.float32)
    mb = tokens.nbytes / 1e6
    writer_mb_s, raw_mb_s = [], []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for _ in range(args.repeats):
            writer_mb_s.append(mb / _writer(Path(tmp) / "part.h5", tokens, cls, bs))
            raw_mb_s.append(mb / _raw_h5py(Path(tmp) / "raw.h5", tokens, bs))
    w, r = statistics.median(writer_mb_s), statistics.median(raw_mb_s)
    print(json.dumps({
        "benchmark": "token_write", "machine": platform.node(), "python": platform.python_version(),
        "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version, "rows": n, "shape": [t, d], "batch": bs,
        "repeats": args.repeats, "token_mb": round(mb, 1), "writer_mb_s": round(w, 1), "raw_h5py_mb_s": round(r, 1),
        "ratio_vs_raw": round(w / r, 3), "writer_runs_mb_s": [round(x, 1) for x in writer_mb_s],
        "raw_runs_mb_s": [round(x, 1) for x in raw_mb_s], "target_mb_s": 500, "target_ratio": 0.8,
        "reference_mb_s": 936,
    }))


if __name__ == "__main__":
    main()
