"""The circuit breaker's states, with an injected clock."""

from __future__ import annotations

import random

from mlserve.routing.breaker import BreakerState, CircuitBreaker
from mlserve.spec import BreakerSpec


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_failures_open_it_after_exactly_the_threshold():
    breaker = CircuitBreaker(BreakerSpec(consecutive_failures=3, window=100), Clock())
    for _ in range(2):
        assert breaker.can_pass()
        breaker.record(False)
    breaker.record(True)  # a success resets the streak
    for _ in range(2):
        breaker.record(False)
    assert breaker.state is BreakerState.CLOSED
    breaker.record(False)
    assert breaker.state is BreakerState.OPEN and not breaker.can_pass()


def test_error_rate_over_a_full_window_opens_it():
    breaker = CircuitBreaker(BreakerSpec(consecutive_failures=100, error_rate=0.5, window=10), Clock())
    for i in range(9):
        breaker.record(i % 2 == 0)  # 4 failures in 9: window not full yet
    assert breaker.state is BreakerState.CLOSED
    breaker.record(False)  # 5 of 10
    assert breaker.state is BreakerState.OPEN


def test_half_open_lets_one_probe_through_and_its_result_decides():
    clock = Clock()
    breaker = CircuitBreaker(BreakerSpec(consecutive_failures=1, open_s=5), clock)
    breaker.record(False)
    clock.now += 4.9
    assert not breaker.can_pass()
    clock.now += 0.2
    assert breaker.can_pass() and breaker.state is BreakerState.HALF_OPEN
    assert not breaker.can_pass()  # one probe at a time
    breaker.record(False)
    assert breaker.state is BreakerState.OPEN and not breaker.can_pass()
    clock.now += 5.1
    assert breaker.can_pass()
    breaker.record(True)
    assert breaker.state is BreakerState.CLOSED and breaker.can_pass() and breaker.num_opened == 2


def test_a_released_probe_frees_the_slot():
    clock = Clock()
    breaker = CircuitBreaker(BreakerSpec(consecutive_failures=1, open_s=1), clock)
    breaker.record(False)
    clock.now += 2
    assert breaker.can_pass()
    breaker.release()
    assert breaker.can_pass()


def test_the_error_rate_follows_the_window_as_it_moves():
    """The failures in the window are counted as entries come and go; the rate equals a recount."""
    rng = random.Random(11)
    clock = Clock()
    breaker = CircuitBreaker(BreakerSpec(consecutive_failures=1_000, error_rate=1.0, window=7, open_s=0.0), clock)
    window: list[bool] = []
    for _ in range(500):
        ok = rng.random() < 0.6
        breaker.record(ok)
        window = (window + [ok])[-7:]
        assert breaker.state is BreakerState.CLOSED or window.count(False) == 7
        if breaker.state is not BreakerState.CLOSED:  # all seven failed: it opened; close it on a probe
            assert breaker.can_pass()
            breaker.record(True)
            window = []
        assert breaker.error_rate == (window.count(False) / len(window) if window else 0.0)
