"""RequestQueue: priority order, FIFO within a level, ageing, row limits, removal."""

from __future__ import annotations

from mlserve.batching.queue import RequestQueue, Waiting


def _item(tag: str, priority: int, at: float, rows: int = 1) -> Waiting:
    return Waiting(inputs=tag, num_rows=rows, priority=priority, enqueued_at=at)


def _tags(batch: list[Waiting]) -> list[str]:
    return [w.inputs for w in batch]


def test_higher_levels_first_fifo_within_a_level():
    queue = RequestQueue(num_levels=3, max_size=10, aging_s=10.0)
    for tag, level, at in [("a3", 3, 0.0), ("b1", 1, 0.1), ("c2", 2, 0.2), ("d1", 1, 0.3), ("e3", 3, 0.4)]:
        queue.push(_item(tag, level, at))
    assert _tags(queue.take(max_rows=10, now=0.5)) == ["b1", "d1", "c2", "a3", "e3"]
    assert queue.num_requests == 0 and queue.num_rows == 0


def test_a_request_waiting_past_the_ageing_limit_goes_first():
    queue = RequestQueue(num_levels=2, max_size=10, aging_s=1.0)
    queue.push(_item("old-low", 2, 0.0))
    queue.push(_item("high", 1, 0.5))
    assert _tags(queue.take(max_rows=1, now=0.9)) == ["high"]
    queue.push(_item("high2", 1, 0.95))
    assert _tags(queue.take(max_rows=1, now=1.2)) == ["old-low"]  # waited 1.2 s >= 1.0 s
    assert _tags(queue.take(max_rows=1, now=1.2)) == ["high2"]


def test_rows_limit_ends_a_batch_without_overtaking():
    queue = RequestQueue(num_levels=1, max_size=10, aging_s=10.0)
    for tag, rows in [("r3", 3), ("r4", 4), ("r1", 1)]:
        queue.push(_item(tag, 1, 0.0, rows))
    assert _tags(queue.take(max_rows=6, now=0.0)) == ["r3"]  # r4 does not fit; r1 may not jump it
    assert _tags(queue.take(max_rows=6, now=0.0)) == ["r4", "r1"]


def test_first_request_is_taken_even_when_over_the_limit():
    queue = RequestQueue(num_levels=1, max_size=10, aging_s=10.0)
    queue.push(_item("big", 1, 0.0, rows=5))
    assert _tags(queue.take(max_rows=1, now=0.0)) == ["big"]


def test_bounded_and_remove():
    queue = RequestQueue(num_levels=2, max_size=2, aging_s=10.0)
    first, second = _item("x", 1, 0.0, rows=2), _item("y", 2, 0.1)
    queue.push(first)
    queue.push(second)
    assert queue.is_full() and queue.num_rows == 3 and queue.num_pushed == 2
    assert queue.oldest_enqueued_at() == 0.0
    assert queue.remove(first) and not queue.remove(first)
    assert not queue.is_full() and queue.num_rows == 1 and queue.oldest_enqueued_at() == 0.1
