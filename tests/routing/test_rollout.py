"""The canary rollout's state machine, with an injected clock."""

from __future__ import annotations

import numpy as np
import pytest

from mlserve.errors import InvalidInput
from mlserve.routing.rollout import Rollout, RolloutPlan, RolloutStatus
from mlserve.routing.rollout_stats import RATIO, StepHealth, increments


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


def test_a_rollout_rebuilt_from_its_stored_state_carries_on_from_the_same_step():
    clock = Clock()
    rollout = Rollout(_plan(), stable=1, clock=clock)
    _feed(rollout, 2, 20)
    clock.now += 60
    assert rollout.tick() and rollout.step == 1
    copy = Rollout.from_state(rollout.to_state(), clock)
    assert (copy.id, copy.step, copy.step_started_at, copy.weights()) == (rollout.id, 1, 60.0, {1: 50.0, 2: 50.0})
    clock.now += 59
    _feed(copy, 2, 20)
    assert not copy.tick()  # the step's dwell runs from the stored start, not from the rebuild
    clock.now += 1
    assert copy.tick() and copy.step == 2


@pytest.mark.parametrize("change, message", [({"status": "DONE"}, "status"), ({"step": 7}, "step"),
                                             ({"plan": {"version": "x"}}, "plan"), ({"id": 3}, "id")])
def test_a_stored_state_that_does_not_parse_is_refused_by_name(change, message):
    raw = {**Rollout(_plan(), stable=1).to_state(), **change}
    with pytest.raises(ValueError, match=message):
        Rollout.from_state(raw)


def test_counts_merged_from_replicas_judge_like_one_replica_with_all_of_them():
    latencies = [0.001 * (1 + i % 37) for i in range(500)]
    one, merged = StepHealth(), {}
    for i, latency in enumerate(latencies):
        one.observe(latency, ok=i % 50 != 0)
        for name, amount in increments(2, latency, i % 50 != 0).items():  # as two replicas' batches add up
            merged[name] = merged.get(name, 0.0) + amount
    summed = StepHealth.from_fields(merged, 2)
    assert (summed.num_requests, summed.num_errors, summed.buckets) == (500, 10, one.buckets)
    exact = float(np.quantile([x for i, x in enumerate(latencies) if i % 50 != 0], 0.99))
    assert exact / RATIO <= summed.quantile(0.99) <= exact * RATIO
    assert StepHealth().quantile(0.99) is None
