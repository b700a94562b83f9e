"""The canary rollout's state machine, with an injected clock."""

from __future__ import annotations

import pytest

from mlserve.errors import InvalidInput
from mlserve.routing.rollout import Rollout, RolloutPlan, RolloutStatus


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _plan(**kw) -> RolloutPlan:
    raw = {"version": "2", "steps": [10, 50, 100], "interval_s": 60, "max_error_rate_increase": 0.01,
           "max_p99_ratio": 1.5, "min_requests": 10, **kw}
    return RolloutPlan.parse(raw)


def _feed(rollout: Rollout, version: int, n: int, latency: float = 0.01, ok: bool = True) -> None:
    for _ in range(n):
        rollout.observe(version, latency, ok)


def test_clean_run_steps_through_and_promotes():
    clock = Clock()
    rollout = Rollout(_plan(), stable=1, clock=clock)
    assert rollout.weights() == {1: 90.0, 2: 10.0}
    for expected in ({1: 50.0, 2: 50.0}, {1: 0.0, 2: 100.0}):
        _feed(rollout, 1, 50)
        _feed(rollout, 2, 20)
        assert not rollout.tick()  # dwell time not over
        clock.now += 60
        assert rollout.tick()
        assert rollout.weights() == expected
    _feed(rollout, 2, 20)
    clock.now += 60
    assert rollout.tick() and rollout.status is RolloutStatus.PROMOTED and rollout.weights() == {2: 100.0}


def test_a_step_waits_for_enough_canary_requests():
    clock = Clock()
    rollout = Rollout(_plan(), stable=1, clock=clock)
    _feed(rollout, 2, 9)
    clock.now += 600
    assert not rollout.tick() and rollout.step == 0
    _feed(rollout, 2, 1)
    assert rollout.tick() and rollout.step == 1


def test_error_rate_breach_rolls_back_at_once():
    rollout = Rollout(_plan(), stable=1, clock=Clock())
    _feed(rollout, 1, 100)
    _feed(rollout, 2, 9)
    rollout.observe(2, 0.01, ok=False)
    assert rollout.tick()  # no dwell needed for a breach
    assert rollout.status is RolloutStatus.ROLLED_BACK and rollout.weights() == {1: 100.0, 2: 0.0}
    assert "error rate" in rollout.reason


def test_p99_breach_rolls_back():
    rollout = Rollout(_plan(), stable=1, clock=Clock())
    _feed(rollout, 1, 100, latency=0.010)
    _feed(rollout, 2, 20, latency=0.020)
    assert rollout.tick() and rollout.status is RolloutStatus.ROLLED_BACK and "p99" in rollout.reason


@pytest.mark.parametrize("raw", [{}, {"version": "x"}, {"version": "2", "steps": [50, 10]},
                                 {"version": "2", "steps": [0]}, {"version": "2", "interval_s": -1},
                                 {"version": "2", "speed": 1}])
def test_bad_plans_are_refused(raw):
    with pytest.raises(InvalidInput):
        RolloutPlan.parse(raw)
