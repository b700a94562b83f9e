"""Canary rollout: a plan of traffic shares with a dwell time, judged against the stable version.

At each step the canary's error rate and p99 latency since the step began are compared with the
stable version's over the same time. A breach rolls back at once (canary weight 0); a step whose
dwell time is over and that saw enough canary requests moves to the next share; the last step
promotes the canary to 100% and makes it the stable version. The clock is injected.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any, Callable

from mlserve.errors import InvalidInput
from mlserve.routing.experiment import VersionHealth
from mlserve.spec.version import version_number


class RolloutStatus(Enum):
    RUNNING = auto()
    PROMOTED = auto()
    ROLLED_BACK = auto()
    CANCELLED = auto()


FINISHED = frozenset({RolloutStatus.PROMOTED, RolloutStatus.ROLLED_BACK, RolloutStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """What a client asked for in POST /admin/models/{m}/rollout."""

    version: int
    steps: tuple[float, ...] = (5, 25, 50, 100)
    interval_s: float = 60.0
    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 1.5
    min_requests: int = 20
    """Canary requests a step needs before it is judged or left."""

    @classmethod
    def parse(cls, raw: Any) -> RolloutPlan:
        if not isinstance(raw, dict) or "version" not in raw:
            raise InvalidInput("rollout needs a JSON object with 'version'")
        unknown = set(raw) - {"version", "steps", "interval_s", "max_error_rate_increase", "max_p99_ratio", "min_requests"}
        if unknown:
            raise InvalidInput(f"rollout: unknown key(s) {', '.join(sorted(unknown))}")
        if version_number(str(raw["version"])) is None:
            raise InvalidInput(f"rollout: {raw['version']!r} is not a version number")
        steps = raw.get("steps", [5, 25, 50, 100])
        if not isinstance(steps, list) or not steps or not all(_number(s) and 0 < s <= 100 for s in steps):
            raise InvalidInput("rollout: 'steps' must be a non-empty list of percents in (0, 100]")
        if list(steps) != sorted(steps):
            raise InvalidInput("rollout: 'steps' must not decrease")
        numbers = {k: raw[k] for k in ("interval_s", "max_error_rate_increase", "max_p99_ratio", "min_requests") if k in raw}
        if not all(_number(v) and v >= 0 for v in numbers.values()):
            raise InvalidInput("rollout: interval_s, max_error_rate_increase, max_p99_ratio, min_requests must be numbers >= 0")
        return cls(int(raw["version"]), tuple(float(s) for s in steps), **numbers)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(slots=True)
class Rollout:
    """One rollout's progress; `tick` advances it, `observe` feeds it results."""

    plan: RolloutPlan
    stable: int
    clock: Callable[[], float] = time.monotonic
    status: RolloutStatus = RolloutStatus.RUNNING
    step: int = 0
    reason: str = ""
    step_started_at: float = 0.0
    history: list[dict] = field(default_factory=list)
    _canary: VersionHealth = field(default_factory=VersionHealth)
    _stable: VersionHealth = field(default_factory=VersionHealth)

    def __post_init__(self) -> None:
        self._begin_step(0)

    @property
    def percent(self) -> float:
        if self.status is RolloutStatus.PROMOTED:
            return 100.0
        if self.status in FINISHED:
            return 0.0
        return self.plan.steps[self.step]

    def weights(self) -> dict[int, float]:
        """The split this rollout wants now."""
        if self.status is RolloutStatus.PROMOTED:
            return {self.plan.version: 100.0}
        return {self.stable: 100.0 - self.percent, self.plan.version: self.percent}

    def observe(self, version: int, latency_s: float, ok: bool) -> None:
        if self.status is not RolloutStatus.RUNNING:
            return
        if version == self.plan.version:
            self._canary.observe(latency_s, ok)
        elif version == self.stable:
            self._stable.observe(latency_s, ok)

    def tick(self) -> bool:
        """Judge the current step; returns True when the rollout's weights changed."""
        if self.status is not RolloutStatus.RUNNING:
            return False
        breach = self._breach()
        if breach:
            self._finish(RolloutStatus.ROLLED_BACK, breach)
            return True
        dwelt = self.clock() - self.step_started_at >= self.plan.interval_s
        if not dwelt or self._canary.num_requests < self.plan.min_requests:
            return False
        if self.step + 1 < len(self.plan.steps):
            self._begin_step(self.step + 1)
        else:
            self._finish(RolloutStatus.PROMOTED, "every step passed")
        return True

    def cancel(self, reason: str) -> None:
        if self.status is RolloutStatus.RUNNING:
            self._finish(RolloutStatus.CANCELLED, reason)

    def _breach(self) -> str:
        canary, stable, plan = self._canary, self._stable, self.plan
        if canary.num_requests < plan.min_requests:
            return ""
        increase = canary.error_rate - stable.error_rate
        if increase > plan.max_error_rate_increase:
            return (f"error rate {canary.error_rate:.4f} vs stable {stable.error_rate:.4f} "
                    f"(+{increase:.4f} > {plan.max_error_rate_increase})")
        p99_canary, p99_stable = canary.quantile(0.99), stable.quantile(0.99)
        if p99_canary is not None and p99_stable and p99_canary / p99_stable > plan.max_p99_ratio:
            return (f"p99 {p99_canary * 1000:.2f} ms vs stable {p99_stable * 1000:.2f} ms "
                    f"(ratio {p99_canary / p99_stable:.2f} > {plan.max_p99_ratio})")
        return ""

    def _begin_step(self, step: int) -> None:
        self.step = step
        self.step_started_at = self.clock()
        self._canary, self._stable = VersionHealth(), VersionHealth()
        self.history.append({"event": "step", "percent": self.plan.steps[step]})

    def _finish(self, status: RolloutStatus, reason: str) -> None:
        self.status, self.reason = status, reason
        self.history.append({"event": status.name.lower(), "reason": reason})

    def to_dict(self) -> dict:
        canary, stable = self._canary, self._stable
        return {
            "version": str(self.plan.version), "stable": str(self.stable), "status": self.status.name.lower(),
            "step": self.step, "steps": list(self.plan.steps), "percent": self.percent, "reason": self.reason,
            "interval_s": self.plan.interval_s, "max_error_rate_increase": self.plan.max_error_rate_increase,
            "max_p99_ratio": self.plan.max_p99_ratio, "min_requests": self.plan.min_requests,
            "current_step": {
                "canary_requests": canary.num_requests, "canary_error_rate": canary.error_rate,
                "canary_p99_s": canary.quantile(0.99), "stable_requests": stable.num_requests,
                "stable_error_rate": stable.error_rate, "stable_p99_s": stable.quantile(0.99),
            },
            "history": self.history,
        }
