"""Per-model traffic state: the split in force, the stable version, breakers, the experiment, the
shadow comparison and the rollout. Plain state; the manager (manager.py) drives it."""

from __future__ import annotations

from dataclasses import dataclass, field

from mlserve.routing.breaker import CircuitBreaker
from mlserve.routing.experiment import Experiment
from mlserve.routing.rollout import Rollout, RolloutStatus
from mlserve.routing.shadow import ShadowStats
from mlserve.spec import TrafficSpec

Weights = tuple[tuple[int, float], ...]


def heaviest(weights: Weights) -> int | None:
    """The version with the largest weight (the lowest version on a tie)."""
    if not weights:
        return None
    return min(weights, key=lambda vw: (-vw[1], vw[0]))[0]


@dataclass(slots=True)
class ModelTraffic:
    """Everything routing knows about one model; survives repository reloads."""

    spec: TrafficSpec
    """The [traffic] section as last read from model.toml; a reload that changed it is applied."""
    split: Weights = ()
    source: str = "model.toml"
    """Who set the split in force: model.toml, api, or rollout."""
    stable: int | None = None
    previous_stable: int | None = None
    experiment: Experiment | None = None
    breakers: dict[int, CircuitBreaker] = field(default_factory=dict)
    shadow: dict[int, ShadowStats] = field(default_factory=dict)
    rollout: Rollout | None = None

    @classmethod
    def from_spec(cls, spec: TrafficSpec, source: str = "model.toml") -> ModelTraffic:
        state = cls(spec)
        state.set_split(spec.split, source)
        state.experiment = Experiment(spec.experiment)
        return state

    def reload(self, spec: TrafficSpec, source: str = "model.toml") -> None:
        """model.toml or the API's keys changed: take the settings; the split too, unless a rollout
        is running. (A model.toml that does not parse never gets here: the repository scan keeps the
        last good one.)"""
        old = self.spec
        self.spec = spec
        if spec.breaker != old.breaker:
            self.breakers.clear()  # new thresholds start from a closed breaker
        if self.experiment is None or self.experiment.spec != spec.experiment:
            self.experiment = Experiment(spec.experiment)
        if spec.split != old.split and not self.is_rolling_out:
            self.set_split(spec.split, source)

    def set_split(self, weights: Weights, source: str) -> None:
        self.split, self.source = weights, source
        if weights and (self.stable is None or self.stable not in dict(weights)):
            self.stable = heaviest(weights)

    def promote(self, version: int) -> None:
        if self.stable != version:
            self.previous_stable = self.stable
        self.stable = version

    def breaker(self, version: int) -> CircuitBreaker:
        found = self.breakers.get(version)
        if found is None:
            found = self.breakers[version] = CircuitBreaker(self.spec.breaker)
        return found

    @property
    def is_rolling_out(self) -> bool:
        return self.rollout is not None and self.rollout.status is RolloutStatus.RUNNING

    def to_dict(self) -> dict:
        return {
            "split": {str(v): w for v, w in self.split},
            "source": self.source,
            "stable": str(self.stable) if self.stable is not None else None,
            "sticky_key": f"{self.spec.sticky_key.source}:{self.spec.sticky_key.name}" if self.spec.sticky_key else None,
            "shadow": self._shadow_dict(),
            "fallback": self.spec.fallback,
            "breakers": {str(v): b.to_dict() for v, b in sorted(self.breakers.items())},
            "rollout": self.rollout.to_dict() if self.rollout else None,
        }

    def _shadow_dict(self) -> dict | None:
        if self.spec.shadow is None:
            return None
        stats = self.shadow.get(self.spec.shadow.version, ShadowStats())
        return {"version": str(self.spec.shadow.version), "percent": self.spec.shadow.percent, **stats.to_dict()}

