"""Benchmark: MB/s of the production store writer (commit_batch via the writer thread) on synthetic fp16 token rows.

Reference (store.md §9): 936 MB/s for (1,T,D) uncompressed chunks with raw h5py; investigate below 500 MB/s.
Prints one JSON record.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from xaiclip_cli.store import layout as L
from xaiclip_cli.store.writer import Batch, commit_batch, create_row_datasets, writer_thread


def _raw_h5py(path: Path, tokens: np.ndarray, batch: int) -> float:
    """Reference: plain h5py writes of the same rows into (1,T,D) chunks."""
    n, t, d = tokens.shape
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=(n, t, d), dtype=np.float16, chunks=(1, t, d))
        for a in range(0, n, batch):
            ds[a:a + batch] = tokens[a:a + batch]
        f.flush()
    return time.perf_counter() - t0


def main() -> None:
    """Write N synthetic rows through the production writer and through raw h5py; print MB/s of both."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=729)
    ap.add_argument("--dim", type=int, default=1152)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    n, t, d, bs = args.rows, args.tokens, args.dim, args.batch
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((n, t, d), dtype=np.float32).astype(np.float16)
    cls = rng.standard_normal((n, d), dtype=np.float32)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "part.h5"
        with h5py.File(path, "w") as f:
            create_row_datasets(f, n, d, t, "float32", True)
        t0 = time.perf_counter()
        with h5py.File(path, "r+") as f, writer_thread(3) as w:
            for a in range(0, n, bs):
                b = min(a + bs, n)
                rows = np.arange(a, b)
                batch = Batch(a, b, cls[a:b], tokens[a:b], rows, rows % 8, np.zeros(b - a, np.uint8),
                              rows.astype(np.int32), np.zeros((b - a, L.IMAGE_HASH_BYTES), np.uint8))
                w.submit(lambda batch=batch: commit_batch(f, batch) and None)
            w.drain()
        secs = time.perf_counter() - t0
        raw = _raw_h5py(Path(tmp) / "raw.h5", tokens, bs)
    mb = tokens.nbytes / 1e6
    print(json.dumps({
        "benchmark": "token_write", "machine": platform.node(), "python": platform.python_version(),
        "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version, "rows": n, "shape": [t, d], "batch": bs,
        "token_mb": round(mb, 1), "writer_mb_s": round(mb / secs, 1), "raw_h5py_mb_s": round(mb / raw, 1),
        "ratio_vs_raw": round(raw / secs, 3), "target_mb_s": 500, "reference_mb_s": 936,
    }))


if __name__ == "__main__":
    main()
