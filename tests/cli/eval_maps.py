"""Shared inputs of the model-based eval CLI tests: random maps with cam-style sidecars on toy-cells images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TEXTS = ["a lymphocyte", "a neutrophil", "an eosinophil"]


def write_rand_maps(d: Path, n: int) -> Path:
    """Tie-free random 8×8 maps with cam-style sidecars naming toy-cells test images 0..n−1 and three texts."""
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        phi = rng.random((8, 8))
        np.savez(d / f"test_{i:05d}_rand.npz", raw=phi, map=phi)
        (d / f"test_{i:05d}_rand.json").write_text(json.dumps({
            "image": {"dataset": "toycells", "split": "test", "index": i}, "method": "rand",
            "texts": [{"name": t, "prompt": t} for t in TEXTS], "target_index": i % 3, "target_name": TEXTS[i % 3]}))
    return d
