"""Batches of samples from a DataSource, read ahead by one background thread (no torch DataLoader needed).

Hand-written because the sources are random-access and cheap to decode: a single reader thread overlapping I/O
and decoding with the consumer's model calls is enough, and it avoids DataLoader's worker processes (which
would each reopen the source) for the small batches the store and CAM stages use.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from xaiclip_cli.data.base import DataSource, Sample


@dataclass
class Batch:
    """Samples of one split; ``images`` is stacked (B,H,W,C) uint8 when all images share a shape, else None."""

    split: str
    indices: np.ndarray
    labels: np.ndarray
    samples: list[Sample]
    images: np.ndarray | None

    def image_list(self) -> list[np.ndarray]:
        """Images one by one (works when sizes differ)."""
        return [s.image for s in self.samples]

    def masks(self) -> np.ndarray | None:
        """Stacked masks (B,H,W) uint8 when every sample has one of the same shape, else None."""
        ms = [s.mask for s in self.samples]
        if not ms or any(m is None for m in ms) or len({m.shape for m in ms}) != 1:  # type: ignore[union-attr]
            return None
        return np.stack(ms)  # type: ignore[arg-type]


def make_batch(split: str, samples: list[Sample]) -> Batch:
    """Wrap samples into a Batch, stacking images when their shapes agree."""
    shapes = {s.image.shape for s in samples}
    images = np.stack([s.image for s in samples]) if len(shapes) == 1 else None
    return Batch(
        split=split,
        indices=np.array([s.index for s in samples], dtype=np.int64),
        labels=np.array([s.label for s in samples], dtype=np.int64),
        samples=samples,
        images=images,
    )


def iter_batches(
    source: DataSource,
    split: str,
    indices: Sequence[int] | None = None,
    batch_size: int = 64,
    prefetch: int = 2,
) -> Iterator[Batch]:
    """Yield batches of ``split`` (``indices`` in the given order, default all) with ``prefetch`` batches read ahead.

    Errors raised while reading (a corrupt image, say) are re-raised in the consumer at the batch where they
    occurred. ``prefetch=0`` reads in the calling thread.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    idx = list(range(source.split_sizes()[split])) if indices is None else [int(i) for i in indices]
    chunks = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    if prefetch <= 0:
        for chunk in chunks:
            yield make_batch(split, source.get_many(split, chunk))
        return

    q: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def _put(item: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _reader() -> None:
        try:
            for chunk in chunks:
                if not _put(("batch", make_batch(split, source.get_many(split, chunk)))):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            _put(("error", exc))
            return
        _put(("done", None))

    thread = threading.Thread(target=_reader, name="xaiclip-batch-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, payload = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise payload  # type: ignore[misc]
            yield payload  # type: ignore[misc]
    finally:
        stop.set()  # the consumer stopped early or finished: let the reader exit
        thread.join(timeout=5)
