"""An A/B experiment over the versions a split routes to: which request went where, the outcomes
that come back by feedback, and the per-version view with its statistics."""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from mlserve.errors import InvalidInput, ModelNotFound
from mlserve.spec.request_id import is_request_id
from mlserve.routing import stats
from mlserve.spec import ExperimentSpec

MAX_ASSIGNMENTS = 100_000
"""Routed requests remembered for feedback per model; older ones are forgotten first."""
MAX_ASSIGNMENT_CHARS = 4_000_000
"""Characters of request ids remembered per model (100,000 server-made ids fit; long client ids fewer)."""
LATENCY_WINDOW = 2000


@dataclass(slots=True)
class VersionHealth:
    """Requests, errors and recent latencies of one version (for the view and for rollouts)."""

    num_requests: int = 0
    num_errors: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def observe(self, latency_s: float, ok: bool) -> None:
        self.num_requests += 1
        if ok:
            self.latencies.append(latency_s)
        else:
            self.num_errors += 1

    @property
    def error_rate(self) -> float:
        return self.num_errors / self.num_requests if self.num_requests else 0.0

    def quantile(self, q: float) -> float | None:
        return float(np.quantile(np.fromiter(self.latencies, float), q)) if self.latencies else None


def _finite(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) or math.isinf(x) else x


class Experiment:
    """Owns assignments (req_id -> version, bounded), outcomes per version, and the sequential tests."""

    def __init__(self, spec: ExperimentSpec) -> None:
        self.spec = spec
        self._assigned: OrderedDict[str, int] = OrderedDict()
        self._answered: set[str] = set()
        self._num_chars = 0
        self.outcomes: dict[int, stats.Moments] = {}
        self.health: dict[int, VersionHealth] = {}
        self._tests: dict[tuple[int, int], stats.SequentialTest] = {}

    @property
    def is_binary(self) -> bool:
        return self.spec.outcome == "binary"

    def assign(self, req_id: str, version: int) -> None:
        """Remember which version answered `req_id`, within both bounds; an id that is not a valid
        request id (over 128 characters, not printable) is not kept, so feedback cannot name it."""
        if not is_request_id(req_id):
            return
        if req_id in self._assigned:
            self._assigned.move_to_end(req_id)
        else:
            self._num_chars += len(req_id)
        self._assigned[req_id] = version
        while len(self._assigned) > MAX_ASSIGNMENTS or self._num_chars > MAX_ASSIGNMENT_CHARS:
            old, _ = self._assigned.popitem(last=False)
            self._num_chars -= len(old)
            self._answered.discard(old)

    @property
    def num_assigned(self) -> int:
        return len(self._assigned)

    @property
    def num_assigned_chars(self) -> int:
        """Characters of the request ids kept for feedback (what bounds their memory)."""
        return self._num_chars

    def observe(self, version: int, latency_s: float, ok: bool) -> None:
        self.health.setdefault(version, VersionHealth()).observe(latency_s, ok)

    def check_value(self, value: object) -> float:
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidInput(f"'value' must be a finite number, got {value!r}")
        if self.is_binary and value not in (0, 1):
            raise InvalidInput(f"this experiment's outcome is binary: 'value' must be 0 or 1, got {value!r}")
        return float(value)

    def feedback(self, req_id: str, value: object, control: int) -> int:
        """Record an outcome for a routed request; returns the version it is credited to."""
        number = self.check_value(value)
        version = self._assigned.get(req_id)
        if version is None:
            raise ModelNotFound(f"no routed request with id {req_id!r} (unknown, explicit-version, or too old)")
        if req_id in self._answered:
            raise InvalidInput(f"request {req_id!r} already has an outcome")
        self._answered.add(req_id)
        self.outcomes.setdefault(version, stats.Moments()).add(number)
        self._update_tests(control)
        return version

    # -- shared across replicas (mlserve/routing/shared.py feeds these) ---------------------------

    def assigned(self, req_id: str) -> int | None:
        """The version this process answered `req_id` with, if it still remembers it."""
        return self._assigned.get(req_id)

    def is_answered(self, req_id: str) -> bool:
        return req_id in self._answered

    def mark_answered(self, req_id: str) -> None:
        if req_id in self._assigned:
            self._answered.add(req_id)

    def credit(self, version: int, value: float, control: int, shared: dict[int, stats.Moments] | None) -> None:
        """An outcome credited to `version`: `shared` holds every arm's moments after it (the store's
        snapshot), or None when this process counts alone (the store away: added locally)."""
        if shared is None:
            self.outcomes.setdefault(version, stats.Moments()).add(value)
        else:
            self.outcomes = shared
        self._update_tests(control)

    def take_shared(self, outcomes: dict[int, stats.Moments], counts: dict[int, tuple[int, int]],
                    p_values: dict[tuple[int, int], float]) -> None:
        """Every replica's view: the store's outcomes, request and error counts and test p-values
        (latency quantiles stay this process's own)."""
        self.outcomes = outcomes
        for version, (num_requests, num_errors) in counts.items():
            health = self.health.setdefault(version, VersionHealth())
            health.num_requests, health.num_errors = num_requests, num_errors
        for pair, p_value in p_values.items():
            test = self._tests.get(pair)
            if test is None:
                test = self._tests[pair] = stats.SequentialTest(self.spec.alpha, self.spec.mde ** 2,
                                                                self.spec.min_samples)
            test.p_value = min(test.p_value, p_value)
            if test.p_value <= self.spec.alpha and test.decided_at is None:
                base, other = outcomes.get(pair[0], stats.Moments()), outcomes.get(pair[1], stats.Moments())
                test.decided_at, test.decided_diff = base.n + other.n, other.mean - base.mean

    def test_p_values(self) -> dict[tuple[int, int], float]:
        return {pair: test.p_value for pair, test in self._tests.items()}

    def _update_tests(self, control: int) -> None:
        base = self.outcomes.get(control)
        if base is None:
            return
        for version, moments in self.outcomes.items():
            if version == control:
                continue
            test = self._tests.get((control, version))
            if test is None:
                test = self._tests[(control, version)] = stats.SequentialTest(
                    self.spec.alpha, self.spec.mde ** 2, self.spec.min_samples
                )
            test.update(base, moments, self.is_binary)

    def view(self, control: int, versions: list[int]) -> dict:
        """Per version: requests, outcomes, mean, CI, lift, p-value, sample size still needed, decision,
        latency and error rate. Control is the stable version."""
        base = self.outcomes.get(control, stats.Moments())
        rows = {str(v): self._row(v, control, base) for v in sorted(set(versions) | set(self.outcomes))}
        return {"control": str(control), "outcome": self.spec.outcome, "alpha": self.spec.alpha,
                "power": self.spec.power, "mde": self.spec.mde, "versions": rows}

    def _row(self, version: int, control: int, base: stats.Moments) -> dict:
        moments = self.outcomes.get(version, stats.Moments())
        health = self.health.get(version, VersionHealth())
        low, high = stats.confidence_interval(moments, self.is_binary, self.spec.alpha)
        row = {
            "requests": health.num_requests, "outcomes": moments.n,
            "mean": moments.mean if moments.n else None, "ci": [_finite(low), _finite(high)],
            "error_rate": health.error_rate,
            "latency_p50_s": health.quantile(0.5), "latency_p99_s": health.quantile(0.99),
        }
        if version != control:
            row.update(self._versus(version, control, base, moments))
        return row

    def _versus(self, version: int, control: int, base: stats.Moments, moments: stats.Moments) -> dict:
        spec = self.spec
        result = stats.compare(base, moments, self.is_binary)
        needed = stats.required_for(base, moments, self.is_binary, spec.mde, spec.alpha, spec.power)
        test = self._tests.get((control, version))
        return {
            "lift": _finite(result.lift) if result else None,
            "diff": result.diff if result else None,
            "p_value": result.p_value if result else None,
            "sample_size_per_arm": needed,
            "samples_still_needed": max(0, needed - min(base.n, moments.n)) if needed is not None else None,
            "sequential_p_value": test.p_value if test else 1.0,
            "decision": _decision(test),
        }


def _decision(test: stats.SequentialTest | None) -> str:
    """Valid under continuous peeking: only the always-valid p-value may end the experiment."""
    if test is None or not test.is_decided:
        return "continue"
    return "treatment_better" if test.decided_diff > 0 else "control_better"
