"""Training state on disk: atomic checkpoint saving (timm CheckpointSaver semantics), RNG state, early stopping."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary name, then replace: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and plain Python (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def metric_value(x: float) -> float:
    """NaN (undefined AUC) ranks below every real value."""
    return -math.inf if x is None or math.isnan(x) else float(x)


class EarlyStopping:
    """Stop when a maximised metric has not improved by more than ``min_delta`` for ``patience`` epochs."""

    def __init__(self, patience: int, min_delta: float = 0.0, enabled: bool = True) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.enabled = enabled
        self.best: float | None = None
        self.bad_epochs = 0

    def step(self, value: float) -> bool:
        """Record one epoch's metric; True when training should stop."""
        v = metric_value(value)
        if self.best is None or v > self.best + self.min_delta:
            self.best = v
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return self.enabled and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """Counter and best value, for checkpoints."""
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint."""
        self.best = state["best"]
        self.bad_epochs = int(state["bad_epochs"])
