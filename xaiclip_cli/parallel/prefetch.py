"""Read an iterator ahead in one background thread, so that producing item i+1 overlaps consuming item i.

Used to overlap the CPU work that builds model inputs (perturbed batches: torch indexing and ``where``, which
release the GIL) with the model's forward pass in the calling thread. Items come out in order and unchanged, so
results never depend on whether read-ahead is on. Hand-written: ``concurrent.futures`` maps a function over known
inputs, whereas here one stateful generator runs ahead with a bounded queue and its errors must reach the consumer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE, _ITEM, _ERROR = 0, 1, 2


def read_ahead(items: Iterable[T], depth: int = 2, name: str = "xaiclip-read-ahead") -> Iterator[T]:
    """Yield ``items`` in order while a background thread produces up to ``depth`` of them ahead.

    An exception raised by the producer is re-raised in the consumer at the item where it occurred; when the
    consumer stops early (break, exception), the producer is told to stop and joined. ``depth=0`` iterates in
    the calling thread.
    """
    if depth <= 0:
        yield from items
        return
    q: queue.Queue[tuple[int, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def _put(entry: tuple[int, object]) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce() -> None:
        try:
            for item in items:
                if not _put((_ITEM, item)):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            _put((_ERROR, exc))
            return
        _put((_DONE, None))

    thread = threading.Thread(target=_produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, payload = q.get()
            if kind == _DONE:
                return
            if kind == _ERROR:
                raise payload  # type: ignore[misc]
            yield payload  # type: ignore[misc]
    finally:
        stop.set()  # the consumer finished or stopped early: let the producer exit
        thread.join()
