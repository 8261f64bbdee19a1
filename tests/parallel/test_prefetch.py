"""read_ahead: items in order and unchanged, producer errors reach the consumer, early stop ends the producer."""

from __future__ import annotations

import threading

import pytest

from xaiclip_cli.parallel.prefetch import read_ahead


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_items_in_order_and_unchanged(depth: int) -> None:
    assert list(read_ahead(iter(range(50)), depth)) == list(range(50))
    assert list(read_ahead([], depth)) == []


def test_produced_in_another_thread_and_ahead() -> None:
    main = threading.get_ident()
    seen: list[int] = []
    second_built = threading.Event()

    def gen():
        for i in range(5):
            seen.append(threading.get_ident())
            if i == 2:
                second_built.set()
            yield i

    it = read_ahead(gen(), depth=2)
    assert next(it) == 0
    assert second_built.wait(timeout=30)  # items 1 and 2 are built while the consumer still holds item 0
    assert list(it) == [1, 2, 3, 4]
    assert seen and all(t != main for t in seen)
    # depth 0: the calling thread produces
    seen.clear()
    assert list(read_ahead(gen(), depth=0)) == [0, 1, 2, 3, 4] and set(seen) == {main}


def test_producer_error_raised_at_its_item() -> None:
    def gen():
        yield 1
        yield 2
        raise KeyError("bad item")

    got: list[int] = []
    with pytest.raises(KeyError, match="bad item"):
        for v in read_ahead(gen(), depth=2):
            got.append(v)
    assert got == [1, 2]


def test_consumer_stopping_early_stops_the_producer() -> None:
    produced: list[int] = []

    def gen():
        for i in range(1000):
            produced.append(i)
            yield i

    before = threading.active_count()
    for v in read_ahead(gen(), depth=2):
        if v == 3:
            break
    assert threading.active_count() == before  # the producer thread has been joined
    assert len(produced) <= 3 + 1 + 2 + 1  # items 0..3, at most depth queued, one blocked in put


def test_consumer_error_stops_the_producer() -> None:
    def gen():
        yield from range(1000)

    before = threading.active_count()
    with pytest.raises(RuntimeError):
        for v in read_ahead(gen(), depth=1):
            if v == 2:
                raise RuntimeError("consumer failed")
    assert threading.active_count() == before
