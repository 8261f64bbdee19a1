"""Benchmark: img/s of full `store image` (prefetch + encode + writer thread + HDF5) vs the bare model forward.

Same images and batches; the bare reference runs encode_image (global + projected tokens) on pre-processed tensors.
torch.set_num_threads(1). Target: ratio >= 0.9 on toy-vit with tokens. Prints one JSON record.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xaiclip_cli.store.image import ImageOptions, run_image_stage


class _Subset:
    """The first ``n`` images of a source's train split, as a DataSource-like object."""

    def __init__(self, source, n: int) -> None:
        self.source, self.n = source, min(n, source.split_sizes()["train"])

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.n, "val": 0, "test": 0}

    def get_many(self, split, indices):
        return self.source.get_many(split, indices)

    def info(self):
        return self.source.info()


def main() -> None:
    """Time the bare forward and the full store on the same batches; print both and their ratio."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="toy")
    ap.add_argument("--model", default="toy-vit")
    ap.add_argument("--dataset", default="toycells")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-tokens", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from xaiclip_cli.data.refs import open_source
    from xaiclip_cli.models.registry import load_backend

    backend = load_backend(args.backend, args.model, device=args.device)
    source = _Subset(open_source(args.dataset), args.images)
    n, bs = source.n, args.batch_size
    batches = []
    for a in range(0, n, bs):
        imgs = [s.image for s in source.get_many("train", list(range(a, min(a + bs, n))))]
        batches.append(backend.preprocess(imgs))
    sync = torch.cuda.synchronize if backend.device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        backend.encode_image(batches[0])  # warm-up
        sync()
        t0 = time.perf_counter()
        for px in batches:
            g, tok = backend.encode_image(px)
            if tok is not None and not args.no_tokens:
                tok.to(torch.float16).cpu()
            g.cpu()
        sync()
        bare = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        opts = ImageOptions(h5=Path(tmp) / "bench.h5", batch_size=bs, tokens=not args.no_tokens, space_check=False)
        t0 = time.perf_counter()
        res = run_image_stage(source, backend, opts)
        full = time.perf_counter() - t0
    assert res.rows_written == n
    print(json.dumps({
        "benchmark": "store_image_throughput", "machine": platform.node(), "torch": torch.__version__,
        "backend": args.backend, "model": args.model, "device": str(backend.device), "threads": args.threads,
        "images": n, "batch_size": bs, "tokens": not args.no_tokens,
        "bare_img_s": round(n / bare, 1), "store_img_s": round(n / full, 1), "ratio": round(bare / full, 3),
        "target_ratio": 0.9, "image_shape": list(np.asarray(batches[0].shape)),
    }))


if __name__ == "__main__":
    main()
