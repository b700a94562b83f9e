"""Canary rollout: a plan of traffic shares with a dwell time, judged against the stable version.

At each step the canary's error rate and p99 latency since the step began are compared with the
stable version's over the same time. A breach rolls back at once (canary weight 0); a step whose
dwell time is over and that saw enough canary requests moves to the next share; the last step
promotes the canary to 100% and makes it the stable version. The clock is injected (wall time by
default: behind replicas a step's start is compared with another process's clock).

A rollout is plain state (`to_state` / `from_state`, what the control document holds), so any
replica can rebuild it and carry on from the same step; the counts it judges are handed in by
`take_counts` (every replica's, summed: rollout_stats.py) or fed one by one by `observe`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any, Callable

from mlserve.errors import InvalidInput
from mlserve.routing.rollout_stats import StepHealth
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

    def to_json(self) -> dict:
        return {"version": str(self.version), "steps": list(self.steps), "interval_s": self.interval_s,
                "max_error_rate_increase": self.max_error_rate_increase, "max_p99_ratio": self.max_p99_ratio,
                "min_requests": self.min_requests}


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(slots=True)
class Rollout:
    """One rollout's progress; `tick` advances it, `observe` feeds it results."""

    plan: RolloutPlan
    stable: int
    clock: Callable[[], float] = time.time
    status: RolloutStatus = RolloutStatus.RUNNING
    step: int = 0
    reason: str = ""
    step_started_at: float = 0.0
    history: list[dict] = field(default_factory=list)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    driver: str = ""
    """The replica that drives it (holds its lease), as last recorded; empty in one process."""
    _canary: StepHealth = field(default_factory=StepHealth)
    _stable: StepHealth = field(default_factory=StepHealth)

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

    @property
    def canary_health(self) -> StepHealth:
        return self._canary

    @property
    def stable_health(self) -> StepHealth:
        return self._stable

    def take_counts(self, canary: StepHealth, stable: StepHealth) -> None:
        """This step's counts so far, summed over every replica: what the next `tick` judges."""
        self._canary, self._stable = canary, stable

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
        self._canary, self._stable = StepHealth(), StepHealth()
        self.history.append({"event": "step", "percent": self.plan.steps[step]})

    def _finish(self, status: RolloutStatus, reason: str) -> None:
        self.status, self.reason = status, reason
        self.history.append({"event": status.name.lower(), "reason": reason})

    def to_dict(self) -> dict:
        canary, stable = self._canary, self._stable
        return {
            "id": self.id, "driver": self.driver or None,
            "version": str(self.plan.version), "stable": str(self.stable), "status": self.status.name.lower(),
            "step": self.step, "steps": list(self.plan.steps), "percent": self.percent, "reason": self.reason,
            "step_started_at": self.step_started_at,
            "interval_s": self.plan.interval_s, "max_error_rate_increase": self.plan.max_error_rate_increase,
            "max_p99_ratio": self.plan.max_p99_ratio, "min_requests": self.plan.min_requests,
            "current_step": {
                "canary_requests": canary.num_requests, "canary_error_rate": canary.error_rate,
                "canary_p99_s": canary.quantile(0.99), "stable_requests": stable.num_requests,
                "stable_error_rate": stable.error_rate, "stable_p99_s": stable.quantile(0.99),
            },
            "history": self.history,
        }

    # -- stored state ------------------------------------------------------------------------------

    def to_state(self) -> dict:
        """What the control document keeps: enough for another replica to carry on from this step."""
        return {"id": self.id, "plan": self.plan.to_json(), "stable": self.stable, "status": self.status.name,
                "step": self.step, "step_started_at": self.step_started_at, "reason": self.reason,
                "history": list(self.history), "driver": self.driver}

    @classmethod
    def from_state(cls, raw: Any, clock: Callable[[], float] = time.time) -> Rollout:
        """A rollout rebuilt from `to_state`'s dict; ValueError names what does not parse."""
        if not isinstance(raw, dict):
            raise ValueError("'rollout' is not an object")
        try:
            plan = RolloutPlan.parse(raw.get("plan"))
        except InvalidInput as exc:
            raise ValueError(f"rollout plan: {exc}") from None
        status = RolloutStatus.__members__.get(str(raw.get("status")))
        step, started, stable = raw.get("step"), raw.get("step_started_at"), raw.get("stable")
        if status is None:
            raise ValueError(f"rollout status {raw.get('status')!r} is not one of {', '.join(RolloutStatus.__members__)}")
        if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < len(plan.steps):
            raise ValueError(f"rollout step {step!r} is not a step of the plan")
        if not _number(started) or not isinstance(stable, int) or isinstance(stable, bool):
            raise ValueError("rollout 'step_started_at' and 'stable' must be numbers")
        history, rollout_id = raw.get("history", []), raw.get("id")
        if not isinstance(history, list) or not isinstance(rollout_id, str) or not rollout_id:
            raise ValueError("rollout 'history' must be a list and 'id' a string")
        rollout = cls(plan, stable, clock)
        rollout.status, rollout.step, rollout.step_started_at = status, step, float(started)
        rollout.reason, rollout.history = str(raw.get("reason", "")), list(history)
        rollout.id, rollout.driver = rollout_id, str(raw.get("driver", ""))
        return rollout
