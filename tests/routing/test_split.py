"""The pure splitter: observed shares against the weights, stickiness while weights ramp."""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats as sps

from mlserve.routing.split import NUM_BUCKETS, assign, boundaries, bucket_of
from mlserve.spec import TrafficSpec, parse_split

N = 10_000


def _within_binomial(count: int, n: int, p: float, z: float = 4.0) -> bool:
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("weights", [{"1": 90, "2": 10}, {"1": 50, "2": 50}, {"1": 70, "2": 20, "3": 10}])
def test_sticky_split_matches_weights_over_10000_keys(weights):
    split = parse_split(weights)
    counts: dict[int, int] = {}
    for i in range(N):
        version = assign(split, f"user-{i}", salt="mlp")
        counts[version] = counts.get(version, 0) + 1
    total = sum(weights.values())
    for version, weight in weights.items():
        assert _within_binomial(counts.get(int(version), 0), N, weight / total), (counts, weights)


def test_keyless_requests_are_a_weighted_random_choice():
    split = parse_split({"1": 90, "2": 10})
    rng = random.Random(7)
    on_two = sum(assign(split, None, "mlp", rng) == 2 for _ in range(N))
    assert _within_binomial(on_two, N, 0.10)


def test_buckets_are_uniform():
    counts = [0] * 10
    for i in range(N):
        counts[bucket_of(f"k{i}", "salt") * 10 // NUM_BUCKETS] += 1
    assert sps.chisquare(counts).pvalue > 1e-4


def test_stickiness_while_weights_ramp_from_10_to_50_percent():
    keys = [f"user-{i}" for i in range(N)]
    previous = {k: assign(parse_split({"1": 90, "2": 10}), k, "mlp") for k in keys}
    for canary in (20, 30, 40, 50):
        split = parse_split({"1": 100 - canary, "2": canary})
        now = {k: assign(split, k, "mlp") for k in keys}
        moved = {k for k in keys if now[k] != previous[k]}
        # Only keys whose bucket crossed the boundary moved, and only from 1 to 2.
        old_edge = boundaries(parse_split({"1": 100 - canary + 10, "2": canary - 10}))[0][1]
        new_edge = boundaries(split)[0][1]
        crossed = {k for k in keys if new_edge <= bucket_of(k, "mlp") < old_edge}
        assert moved == crossed
        assert all(previous[k] == 1 and now[k] == 2 for k in moved)
        assert _within_binomial(len(moved), N, 0.10)
        previous = now


def test_salt_changes_the_assignment():
    split = parse_split({"1": 50, "2": 50})
    same = sum(assign(split, f"u{i}", "a") == assign(split, f"u{i}", "b") for i in range(2000))
    assert _within_binomial(same, 2000, 0.5)


@pytest.mark.parametrize("raw, message", [
    ({"split": {"one": 50}}, "not a version number"),
    ({"split": {"1": -1}}, "a number in 0..1e9"),
    ({"split": {"1": 0}}, "all be zero"),
    ({"sticky_key": "cookie:x"}, "sticky_key"),
    ({"shadow": {"version": "2", "percent": 150}}, "percent"),
    ({"splitt": {}}, "unknown key"),
    ({"experiment": {"outcome": "ordinal"}}, "outcome"),
    ({"breaker": {"error_rate": 2}}, "error_rate"),
])
def test_bad_traffic_tables_name_the_problem(raw, message):
    with pytest.raises(ValueError, match=message):
        TrafficSpec.parse(raw)


def test_traffic_table_parses():
    spec = TrafficSpec.parse({
        "split": {"1": 90, "2": 10}, "sticky_key": "header:X-User-Id",
        "shadow": {"version": "3", "percent": 100}, "fallback": "mlp_old",
        "breaker": {"consecutive_failures": 3}, "experiment": {"outcome": "numeric", "mde": 0.5},
    })
    assert spec.split == ((1, 90.0), (2, 10.0))
    assert spec.sticky_key.extract({"X-User-Id": "u42"}, {}) == "u42"
    assert spec.shadow.version == 3 and spec.fallback == "mlp_old"
    assert spec.breaker.consecutive_failures == 3 and spec.experiment.outcome == "numeric"
