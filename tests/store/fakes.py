"""Test doubles for the store: a deterministic fake ClipBackend and a synthetic DataSource (exact oracles)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from xaiclip_cli.data.base import SPLITS, DataSource, Sample, SourceInfo
from xaiclip_cli.models.base import ClipBackend

SIZE = 8  # image side of the fake source = fake model input size (preprocess does not resize)
GRID = 2  # 2x2 tokens of 4x4 pixels
DIM = 6


def fake_image(split: str, index: int, size: int = SIZE) -> np.ndarray:
    """The image of (split, index): deterministic uint8 HWC."""
    rng = np.random.default_rng(1000 * SPLITS.index(split) + index)
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


class FakeSource(DataSource):
    """Synthetic split sizes; label = index % 3; images from fake_image."""

    def __init__(self, sizes: dict[str, int] | None = None, md5: str = "fake-md5", salt: int = 0) -> None:
        self.sizes = {s: 0 for s in SPLITS} | (sizes or {"train": 5, "val": 2, "test": 3})
        self.md5 = md5
        self.salt = salt

    def split_sizes(self) -> dict[str, int]:
        return dict(self.sizes)

    def get(self, split: str, index: int) -> Sample:
        if not 0 <= index < self.sizes[split]:
            raise IndexError(index)
        img = fake_image(split, index)
        if self.salt:
            img = (img.astype(np.int32) + self.salt).astype(np.uint8)
        return Sample(image=img, label=index % 3, split=split, index=index)

    def info(self) -> SourceInfo:
        return SourceInfo(kind="fake", ref="fake", file="/nowhere/fake.npz", md5=self.md5, image_size=SIZE,
                          class_names=["a", "b", "c"])


def expected_features(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Oracle: (cls [DIM] normalised, tokens [GRID*GRID, DIM]) of one uint8 image, computed in NumPy float64."""
    x = image.astype(np.float64) / 255.0  # HWC
    p = SIZE // GRID
    toks = []
    for i in range(GRID):
        for j in range(GRID):
            patch = x[i * p:(i + 1) * p, j * p:(j + 1) * p]
            m = patch.mean(axis=(0, 1))  # 3
            toks.append(np.concatenate([m, m ** 2]))  # DIM = 6
    tokens = np.stack(toks)
    g = tokens.mean(axis=0) + 0.1
    return g / np.linalg.norm(g), tokens


class FakeBackend(ClipBackend):
    """Features are simple functions of patch means (see expected_features); text features from character codes."""

    name = "fake"
    embed_dim = DIM
    image_size = SIZE
    token_grid = (GRID, GRID)
    context_length = 16

    def __init__(self, delay: float = 0.0, revision: str = "r1", tokens: bool = True) -> None:
        super().__init__()
        self.delay = delay
        self.revision = revision
        self.with_tokens = tokens
        self.calls = 0
        self._vision = nn.Identity()

    def provenance(self) -> dict[str, Any]:
        return {"model_id": "fake-model", "model_revision": self.revision,
                "processor_config": {"size": SIZE, "mean": 0, "std": 1}}

    def preprocess(self, images: Any) -> torch.Tensor:
        arr = np.stack([np.asarray(im) for im in images]) if not isinstance(images, np.ndarray) else images
        if arr.ndim == 3:
            arr = arr[None]
        return torch.from_numpy(arr.astype(np.float64) / 255.0).permute(0, 3, 1, 2).contiguous()

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        L = max_length or self.context_length
        seqs = [[1] + [2 + (ord(c) % 50) for c in t][: L - 1] for t in texts]
        n = max(len(s) for s in seqs) if seqs else 1
        ids = torch.zeros(len(seqs), n, dtype=torch.long)
        mask = torch.zeros(len(seqs), n, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return ids, mask

    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        b = pixels.shape[0]
        p = SIZE // GRID
        x = pixels.double().reshape(b, 3, GRID, p, GRID, p).mean(dim=(3, 5))  # b,3,G,G
        m = x.permute(0, 2, 3, 1).reshape(b, GRID * GRID, 3)
        tokens = torch.cat([m, m ** 2], dim=-1)
        g = tokens.mean(dim=1) + 0.1
        g = g / g.norm(dim=-1, keepdim=True)
        return g.float(), (tokens.float() if self.with_tokens else None)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        e = torch.stack([(ids.double() * (k + 1)).sin() for k in range(DIM)], dim=-1) * mask[..., None]
        g = e.sum(dim=1) + 0.5
        g = g / g.norm(dim=-1, keepdim=True)
        return g.float(), e.float()

    def vision_module(self) -> nn.Module:
        return self._vision

    @property
    def raw_logit_scale(self) -> float:
        return 4.5

    @property
    def raw_logit_bias(self) -> float | None:
        return -10.0

    def to(self, device: Any, dtype: Any = None) -> FakeBackend:
        return self


def load_fake(model: str | None = None, revision: str | None = None, device: str = "auto", **kw: Any) -> FakeBackend:
    """Registry-style loader; XAICLIP_FAKE_DELAY slows encode_image (kill tests)."""
    return FakeBackend(delay=float(os.environ.get("XAICLIP_FAKE_DELAY", "0")), revision=revision or "r1")


def read_rows(path: Any) -> dict[str, np.ndarray]:
    """Every row dataset of a store (through the index / single file), for exact comparisons."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        for name in ("image_features", "image_token_features", "ids", "labels", "split", "written", "source_split",
                     "source_index", "image_hash"):
            if name in f:
                out[name] = f[name][...]
        out["split_counts"] = np.array(f.attrs["split_counts"])
        out["n_written"] = np.array(f.attrs["n_written"])
    return out


def patch_jobs(monkeypatch: Any = None, sizes: dict[str, int] | None = None, delay: float = 0.0) -> None:
    """Make store.jobs use FakeSource/FakeBackend/a small prompt set (monkeypatch, or plain setattr in a subprocess)."""
    from xaiclip_cli.store import jobs

    sizes = sizes or {"train": 5, "val": 2, "test": 3}
    delay = float(os.environ.get("XAICLIP_FAKE_DELAY", delay))

    def _source(s: Any) -> FakeSource:
        return FakeSource(sizes)

    def _model(s: Any, device: str) -> FakeBackend:
        return FakeBackend(delay=delay, revision=s.revision or "r1")

    def _prompts(ref: str) -> dict[str, Any]:
        return {"name": ref, "labels": ["alpha", "beta", "gamma"], "label_templates": ["a {} cell", "an image of {}"],
                "concepts": ["round", "dark", "big"], "concept_templates": ["cell with {}"]}

    for name, fn in (("open_dataset", _source), ("load_model", _model), ("open_prompts", _prompts)):
        if monkeypatch is not None:
            monkeypatch.setattr(jobs, name, fn)
        else:
            setattr(jobs, name, fn)
