"""Re-running the model for eval: target scores s_t of batches in the model's input space, images of map items.

The normalisation constants are read off the backend's own preprocessing (an all-black and an all-white image),
so baselines such as `black` are exact for any backend without knowing its processor config.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xaiclip_cli.errors import UsageError


class TargetScorer:
    """s_t(images) for one text set: cosine, logit, softmax over the texts, or sigmoid; counts forwards and time."""

    def __init__(self, backend: Any, texts: Sequence[str], kind: str = "softmax") -> None:
        import torch

        from xaiclip_cli.models.base import score_features

        self.backend, self.kind, self.texts = backend, kind, list(texts)
        self._score = score_features
        with torch.no_grad():
            self.text = backend.encode_texts(self.texts).float()
        size = int(backend.image_size)
        with torch.no_grad():
            p0 = backend.preprocess(np.zeros((size, size, 3), np.uint8)).float()
            p1 = backend.preprocess(np.full((size, size, 3), 255, np.uint8)).float()
        d = (p1 - p0)[0, :, 0, 0]
        self.std = (1.0 / d).to(p0.device)
        self.mean = (-p0[0, :, 0, 0] * self.std).to(p0.device)
        self.size = (int(p0.shape[-2]), int(p0.shape[-1]))
        self.forwards = 0
        self.model_seconds = 0.0

    def pixels(self, images: Sequence[np.ndarray]) -> Any:
        """uint8 HWC images → the model's normalised input batch (float32, on the model's device)."""
        import torch

        with torch.no_grad():
            return self.backend.preprocess(list(images)).float()

    def scores(self, batch: Any) -> Any:
        """All texts' scores [b, K] of a normalised batch."""
        import torch

        t = time.perf_counter()
        with torch.no_grad(), self.backend.autocast():
            g, _ = self.backend.encode_image(batch.to(self.backend.device))
        out = self._score(g.float(), self.text, self.kind, self.backend.logit_scale, self.backend.logit_bias)
        self.forwards += int(batch.shape[0])
        self.model_seconds += time.perf_counter() - t
        return out

    def __call__(self, batch: Any, targets: Any) -> Any:
        """s_t of each image of the batch for its target index."""
        import torch

        s = self.scores(batch)
        return s[torch.arange(s.shape[0], device=s.device), targets.to(s.device)]

    def to_pixel_space(self, x: Any) -> Any:
        """Normalised batch → [0,1] image values."""
        return x * self.std.view(1, -1, 1, 1) + self.mean.view(1, -1, 1, 1)

    def from_pixel_space(self, u: Any) -> Any:
        """[0,1] image values → normalised batch."""
        return (u - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)


def image_seed(seed: int, key: str) -> np.random.Generator:
    """A PCG64 generator for one image: the same for every method that explains it (paired comparisons)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), zlib.crc32(key.encode())])))


class ImageResolver:
    """The uint8 image a map explains: its sidecar's path or dataset row, else --images by stem, else --dataset."""

    def __init__(self, images: Sequence[Path], dataset: str | None, split: str) -> None:
        self.by_stem: dict[str, Path] = {}
        for p in images:
            p = Path(p)
            if not p.exists():
                raise UsageError(f"--images {p}: no such file or folder")
            files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.suffix.lower() in
                                                    (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"))
            for f in files:
                self.by_stem.setdefault(f.stem, f)
        self.dataset, self.split = dataset, split
        self._sources: dict[str, Any] = {}

    def check_counts(self, items: Sequence[Any]) -> None:
        """With --images, the number of images must equal the number of maps that need one (exit 2 otherwise)."""
        need = [it for it in items if not it.image]
        if self.by_stem and need and len(self.by_stem) != len(need):
            raise UsageError(f"{len(need)} maps without an image in their sidecar but {len(self.by_stem)} images "
                             "in --images; give one image per map (paired by file stem)")

    def _source(self, ref: str) -> Any:
        if ref not in self._sources:
            from xaiclip_cli.data.refs import open_source

            self._sources[ref] = open_source(ref)
        return self._sources[ref]

    def get(self, item: Any) -> np.ndarray | None:
        """uint8 HWC image (grey repeated to RGB), or None when it cannot be found."""
        from xaiclip_cli.explain.api import load_image
        from xaiclip_cli.metrics.maps import dataset_index

        img = None
        ref = item.image
        if ref.get("path") and Path(str(ref["path"])).is_file():
            img = load_image(ref["path"])
        elif ref.get("dataset") and ref.get("split") is not None and ref.get("index") is not None:
            img = self._source(str(ref["dataset"])).get(str(ref["split"]), int(ref["index"])).image
        elif item.stem in self.by_stem:
            img = load_image(self.by_stem[item.stem])
        elif self.dataset is not None:
            si = dataset_index(item.stem)
            if si is not None:
                img = self._source(self.dataset).get(si[0], si[1]).image
        if img is None:
            return None
        a = np.asarray(img)
        if a.ndim == 2:
            a = a[:, :, None]
        return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def texts_of(item: Any, given: Sequence[str]) -> tuple[list[str], list[str]]:
    """(names, prompts) scored for an item: its sidecar's texts, else --text."""
    side = item.sidecar.get("texts")
    if isinstance(side, list) and side:
        names = [str(t.get("name", t.get("prompt"))) if isinstance(t, dict) else str(t) for t in side]
        prompts = [str(t.get("prompt", t.get("name"))) if isinstance(t, dict) else str(t) for t in side]
        return names, prompts
    if given:
        return list(given), list(given)
    raise UsageError(f"map {item.key}: its sidecar names no texts; give the texts with --text (repeatable)")


def needs_scores(rule: str, item: Any, names: Sequence[str]) -> bool:
    """Whether :func:`resolve_target` reads the unperturbed scores for this item (``best``, or a sidecar rule
    whose explained text is not among ``names``); every other rule fixes the target without a forward pass."""
    from xaiclip_cli.explain.targets import parse_target

    r = str(rule).strip().lower()
    if r == "sidecar":
        return not ((item.target_index is not None and 0 <= int(item.target_index) < len(names))
                    or item.target_name in names)
    return parse_target(rule, names) == "best"


def resolve_target(rule: str, item: Any, names: Sequence[str], scores_full: np.ndarray | None) -> int:
    """Target index: sidecar (explained text; its name if the index is absent), best, or an index/name.

    ``scores_full`` (the unperturbed image's scores) may be None when :func:`needs_scores` is false.
    """
    from xaiclip_cli.explain.targets import parse_target

    r = str(rule).strip().lower()
    if r == "sidecar":
        if item.target_index is not None and 0 <= int(item.target_index) < len(names):
            return int(item.target_index)
        if item.target_name in names:
            return list(names).index(item.target_name)
        return int(np.argmax(scores_full))
    t = parse_target(rule, names)
    if t == "best":
        return int(np.argmax(scores_full))
    if t == "all":
        raise UsageError("--target all is not supported by eval (one target per map)")
    return int(t)


def model_record(backend: Any) -> dict[str, Any]:
    """The model fields every model-based eval.json records (backend, id, revision, weights hash)."""
    return {k: v for k, v in (backend.provenance() or {}).items()
            if k in ("backend", "model_id", "model_revision", "sha256")}


def cached_scorer(cache: dict[tuple[str, ...], Any], backend: Any, prompts: Sequence[str], score: str) -> Any:
    """The TargetScorer of one text set, built once per process (its texts are encoded once)."""
    key = tuple(prompts)
    if key not in cache:
        cache[key] = TargetScorer(backend, list(prompts), score)
    return cache[key]
