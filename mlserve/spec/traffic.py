"""The [traffic] section of model.toml: split, sticky key, shadow, fallback, experiment, breaker and bandit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from mlserve.spec.table import MAX_LIST_ITEMS, between, parse_table
from mlserve.spec.version import version_number

OUTCOME_KINDS = ("binary", "numeric")
BANDIT_POLICIES = ("thompson", "epsilon_greedy")
DEFAULT_EPSILON = 0.1
MIN_UPDATE_S = 0.05


@dataclass(frozen=True, slots=True)
class StickyKey:
    """Where a request's assignment key comes from: a header, or a v2 request parameter."""

    source: str
    name: str

    @classmethod
    def parse(cls, raw: Any) -> StickyKey:
        source, _, name = str(raw).partition(":")
        if source not in ("header", "param") or not name:
            raise ValueError(f"sticky_key must be 'header:NAME' or 'param:NAME', got {raw!r}")
        return cls(source, name)

    def extract(self, headers: Mapping[str, str], parameters: Mapping[str, Any]) -> str | None:
        value = headers.get(self.name) if self.source == "header" else parameters.get(self.name)
        return None if value is None or value == "" else str(value)


@dataclass(frozen=True, slots=True)
class ShadowSpec:
    """A version that gets a copy of `percent` of the traffic; its answers are only compared."""

    version: int
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class ExperimentSpec:
    """How outcomes are judged: kind, significance, power and the smallest effect worth finding."""

    outcome: str = "binary"
    alpha: float = 0.05
    power: float = 0.8
    mde: float = 0.02
    """Minimum detectable effect, absolute, in the outcome's units (0.02 = two points of conversion)."""
    min_samples: int = field(default=100, metadata=between(2, 10**9))
    """Outcomes per arm before the sequential test may decide (its variance estimate needs them)."""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOME_KINDS:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOME_KINDS)}, got {self.outcome!r}")
        if not 0 < self.alpha < 1 or not 0 < self.power < 1:
            raise ValueError("alpha and power must lie strictly between 0 and 1")
        if self.mde <= 0:
            raise ValueError("mde must be positive")
        if self.min_samples < 2:
            raise ValueError("min_samples must be >= 2")


@dataclass(frozen=True, slots=True)
class BreakerSpec:
    """When a version's breaker opens, and how it probes its way back."""

    consecutive_failures: int = field(default=5, metadata=between(1, 1_000_000))
    error_rate: float = 0.5
    window: int = field(default=20, metadata=between(1, 1_000_000))
    """Requests in the error-rate window; the rate is judged once the window is full."""
    open_s: float = field(default=5.0, metadata=between(0, 86400))
    """Time an open breaker waits before letting one probe through (half-open)."""

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1 or self.window < 1 or self.open_s < 0:
            raise ValueError("consecutive_failures and window must be >= 1, open_s >= 0")
        if not 0 < self.error_rate <= 1:
            raise ValueError("error_rate must lie in (0, 1]")


@dataclass(frozen=True, slots=True)
class BanditSpec:
    """A bandit that owns the split: every `update_s` it gives each arm its posterior probability of
    being the best (thompson) or (1 - epsilon) to the best mean (epsilon_greedy), never under `min_share`."""

    policy: str = "thompson"
    min_share: float = field(default=0.05, metadata=between(0, 0.5))
    """Smallest share of the traffic any arm keeps (so a worse-looking arm still gets outcomes)."""
    update_s: float = field(default=10.0, metadata=between(MIN_UPDATE_S, 86400))
    """Seconds between two reallocations of the split (each is one write to the state store)."""
    epsilon: float | None = field(default=None, metadata=between(0, 1))
    """epsilon_greedy only: the share spread evenly over all arms (default 0.1)."""

    def __post_init__(self) -> None:
        if self.policy not in BANDIT_POLICIES:
            raise ValueError(f"policy must be one of {', '.join(BANDIT_POLICIES)}, got {self.policy!r}")
        if not self.update_s > 0:
            raise ValueError(f"update_s must be > 0, got {self.update_s!r}")
        if self.epsilon is not None and self.policy != "epsilon_greedy":
            raise ValueError(f"epsilon applies only to policy = \"epsilon_greedy\", not {self.policy!r}")

    @property
    def explore(self) -> float:
        """epsilon_greedy's exploration share (its default when not set)."""
        return DEFAULT_EPSILON if self.epsilon is None else self.epsilon


def _weights(raw: Any) -> tuple[tuple[int, float], ...]:
    if not isinstance(raw, Mapping) or not raw or len(raw) > MAX_LIST_ITEMS:
        raise ValueError(f"split must be a table of 1..{MAX_LIST_ITEMS} version = percent, got {raw!r}")
    out = []
    for version, weight in raw.items():
        number = version_number(str(version))
        if number is None:
            raise ValueError(f"split: {version!r} is not a version number ")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1e9:
            raise ValueError(f"split: weight of version {version} must be a number in 0..1e9, got {weight!r}")
        out.append((number, float(weight)))
    if sum(w for _, w in out) <= 0:
        raise ValueError("split: the weights must not all be zero")
    return tuple(sorted(out))


def parse_split(raw: Any) -> tuple[tuple[int, float], ...]:
    """{"1": 90, "2": 10} -> ((1, 90.0), (2, 10.0)); raises ValueError naming the problem."""
    return _weights(raw)


def _shadow(raw: Any) -> ShadowSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or "version" not in raw or set(raw) - {"version", "percent"}:
        raise ValueError(f"shadow must be {{ version = \"N\", percent = P }}, got {raw!r}")
    version = version_number(str(raw["version"]))
    if version is None:
        raise ValueError(f"shadow: {raw['version']!r} is not a version number")
    percent = raw.get("percent", 100)
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
        raise ValueError(f"shadow: percent must lie in 0..100, got {percent!r}")
    return ShadowSpec(version, float(percent))


@dataclass(frozen=True, slots=True)
class TrafficSpec:
    """A model's `[traffic]` table, checked."""

    split: tuple[tuple[int, float], ...] = ()
    sticky_key: StickyKey | None = None
    shadow: ShadowSpec | None = None
    fallback: str = "previous"
    """"previous" (the previous stable version) or the name of another model."""
    salt: str = ""
    experiment: ExperimentSpec = field(default_factory=ExperimentSpec)
    breaker: BreakerSpec = field(default_factory=BreakerSpec)
    bandit: BanditSpec | None = None
    """When set, the bandit owns the split: its arms are the split's versions (every ready version
    when there is no split) and the split is where they start."""

    def __post_init__(self) -> None:
        if self.bandit is None:
            return
        if len(self.split) == 1:
            raise ValueError(f"bandit needs 2 or more arms, but split names only version {self.split[0][0]}")
        num_arms = len(self.split) or 2
        if self.bandit.min_share > 1 / num_arms:
            raise ValueError(f"bandit min_share must lie in 0..1/{num_arms} (one share for each of "
                             f"{num_arms} arms), got {self.bandit.min_share!r}")

    @classmethod
    def parse(cls, raw: Any) -> TrafficSpec:
        """From model.toml's [traffic] table (None = all defaults); ValueError names the bad key."""
        return parse_table(cls, raw, "[traffic]", convert={
            "split": _weights,
            "sticky_key": StickyKey.parse,
            "shadow": _shadow,
            "experiment": lambda t: parse_table(ExperimentSpec, t, "[traffic.experiment]"),
            "breaker": lambda t: parse_table(BreakerSpec, t, "[traffic.breaker]"),
            "bandit": lambda t: parse_table(BanditSpec, t, "[traffic.bandit]"),
        })
