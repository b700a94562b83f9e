"""Bandit policies: the split a multi-armed bandit gives its arms, from each arm's outcome moments.

- thompson: each arm's share is the posterior probability that it is the best arm, estimated from
  NUM_DRAWS Monte-Carlo draws of a seeded generator. Binary outcomes: Beta(1 + successes,
  1 + failures) (a uniform prior). Numeric outcomes: the mean's normal posterior N(mean, variance/n);
  an arm with fewer than two outcomes borrows the variance pooled over the arms (1.0 when no arm has
  any), and one with none is centred on the pooled mean with that spread, so it is still explored.
- epsilon_greedy: epsilon spread evenly over the arms, the rest to the arm with the best mean; an arm
  with no outcomes yet counts as the best (it must be tried).

Either way every arm keeps at least `min_share` (water-filling: an arm below the floor is lifted to
it, the others share what is left in proportion; with more arms than 1/min_share, as can happen
when the arms are every ready version, the floor is 1/num_arms), and the shares sum to 1.

Pure functions of their inputs: no clock, no store, no global random state, so a simulation with a
fixed seed is reproducible (benchmarks/bandit.py, tests/routing/test_bandit.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from mlserve.routing.stats import Moments
from mlserve.spec import BanditSpec, parse_split

NUM_DRAWS = 4_000
"""Posterior draws per update: a probability of being best near 0.5 comes within about 0.01 (one sd)."""


@dataclass(frozen=True, slots=True)
class Allocation:
    """One reallocation: each arm's share of the traffic (sums to 1) and its probability of being best."""

    shares: dict[int, float]
    p_best: dict[int, float]


def allocate(spec: BanditSpec, arms: Sequence[int], outcomes: Mapping[int, Moments], is_binary: bool,
             rng: np.random.Generator) -> Allocation:
    """The split `spec`'s policy gives `arms` (versions, two or more) given each arm's outcomes so far."""
    assert len(arms) >= 2, "a bandit needs two arms"
    moments = [outcomes.get(arm, Moments()) for arm in arms]
    if spec.policy == "thompson":
        p_best = thompson_p_best(moments, is_binary, rng)
        raw = p_best
    else:
        best = _best_mean(moments)
        p_best = [1.0 if i == best else 0.0 for i in range(len(arms))]
        raw = [spec.explore / len(arms) + (1 - spec.explore) * p for p in p_best]
    shares = floor_shares(raw, min(spec.min_share, 1 / len(arms)))  # more ready arms than load checked for
    return Allocation(dict(zip(arms, shares)), dict(zip(arms, p_best)))


def thompson_p_best(moments: Sequence[Moments], is_binary: bool, rng: np.random.Generator) -> list[float]:
    """P(arm i has the highest mean | outcomes), by Monte-Carlo over the posteriors."""
    draws = _beta_draws(moments, rng) if is_binary else _normal_draws(moments, rng)  # [NUM_DRAWS, num_arms]
    wins = np.bincount(np.argmax(draws, axis=1), minlength=len(moments))
    return (wins / NUM_DRAWS).tolist()


def _beta_draws(moments: Sequence[Moments], rng: np.random.Generator) -> np.ndarray:
    successes = np.array([m.mean * m.n for m in moments])
    failures = np.array([m.n for m in moments]) - successes
    return rng.beta(1.0 + successes, 1.0 + np.maximum(failures, 0.0), size=(NUM_DRAWS, len(moments)))


def _normal_draws(moments: Sequence[Moments], rng: np.random.Generator) -> np.ndarray:
    total = sum(m.n for m in moments)
    pooled_mean = sum(m.mean * m.n for m in moments) / total if total else 0.0
    dof = sum(m.n - 1 for m in moments if m.n > 1)
    pooled_var = sum(m.m2 for m in moments if m.n > 1) / dof if dof else 1.0
    pooled_var = pooled_var if pooled_var > 0 else 1.0
    centres, spreads = [], []
    for m in moments:
        if m.n == 0:
            centres.append(pooled_mean)
            spreads.append(pooled_var ** 0.5)
        else:
            variance = m.variance if m.n > 1 and m.variance > 0 else pooled_var
            centres.append(m.mean)
            spreads.append((variance / m.n) ** 0.5)
    return rng.normal(np.array(centres), np.array(spreads), size=(NUM_DRAWS, len(moments)))


def _best_mean(moments: Sequence[Moments]) -> int:
    """The arm with the best mean; an arm with no outcome first (the lowest index on a tie)."""
    untried = [i for i, m in enumerate(moments) if m.n == 0]
    if untried:
        return untried[0]
    return max(range(len(moments)), key=lambda i: (moments[i].mean, -i))


def floor_shares(raw: Sequence[float], min_share: float) -> list[float]:
    """`raw` (non-negative) as shares that sum to 1 with none under `min_share` (at most 1/len(raw)):
    arms under the floor are lifted to it, and the rest share what is left in proportion to `raw`."""
    assert 0 <= min_share * len(raw) <= 1 + 1e-12, "min_share is at most 1/num_arms (checked at load)"
    floored: set[int] = set()
    while True:
        free = [i for i in range(len(raw)) if i not in floored]
        left = 1.0 - min_share * len(floored)
        total = sum(raw[i] for i in free)
        shares = [min_share if i in floored else (raw[i] / total * left if total > 0 else left / len(free))
                  for i in range(len(raw))]
        below = {i for i in free if shares[i] < min_share}
        if not below or len(below) == len(free):
            return [min_share if i in below else s for i, s in enumerate(shares)] if below else shares
        floored |= below


@dataclass(frozen=True, slots=True)
class BanditRecord:
    """The split a bandit last wrote (the control document's "bandit" entry), as every replica applies
    it: shares in percent, each arm's probability of being best and outcome count, when and by whom."""

    split: tuple[tuple[int, float], ...]
    p_best: dict[int, float]
    outcomes: dict[int, int]
    updated_at: float
    """Wall-clock seconds since the epoch (it is compared across machines)."""
    by: str
    num_updates: int

    @classmethod
    def of(cls, allocation: Allocation, outcomes: Mapping[int, Moments], updated_at: float, by: str) -> BanditRecord:
        split = tuple((arm, round(share * 100, 4)) for arm, share in sorted(allocation.shares.items()))
        counts = {arm: outcomes[arm].n if arm in outcomes else 0 for arm in allocation.shares}
        return cls(split, dict(allocation.p_best), counts, updated_at, by, 0)

    def to_json(self) -> dict:
        return {"split": {str(v): w for v, w in self.split}, "p_best": {str(v): p for v, p in self.p_best.items()},
                "outcomes": {str(v): n for v, n in self.outcomes.items()}, "updated_at": self.updated_at,
                "by": self.by, "updates": self.num_updates}

    @classmethod
    def from_json(cls, raw: object) -> BanditRecord:
        """A stored entry, checked; ValueError names what is wrong (bad data in the store)."""
        if not isinstance(raw, dict) or set(raw) != {"split", "p_best", "outcomes", "updated_at", "by", "updates"}:
            raise ValueError(f"'bandit' is not a bandit record: {raw!r}"[:300])
        numbers = (raw["p_best"], raw["outcomes"])
        if not all(isinstance(t, dict) and all(str(k).isdigit() and isinstance(v, (int, float)) for k, v in t.items())
                   for t in numbers):
            raise ValueError("'bandit': p_best and outcomes must map versions to numbers")
        if not isinstance(raw["updated_at"], (int, float)) or not isinstance(raw["by"], str) \
                or not isinstance(raw["updates"], int):
            raise ValueError("'bandit': updated_at, by and updates must be a number, a string and an integer")
        return cls(parse_split(raw["split"]), {int(k): float(v) for k, v in raw["p_best"].items()},
                   {int(k): int(v) for k, v in raw["outcomes"].items()}, float(raw["updated_at"]), raw["by"],
                   raw["updates"])

    def with_updates(self, num_updates: int) -> BanditRecord:
        return dataclasses.replace(self, num_updates=num_updates)


def bandit_view(spec: BanditSpec | None, record: BanditRecord | None, split: tuple[tuple[int, float], ...],
                is_paused: bool) -> dict | None:
    """The experiment view's "bandit": its settings, the shares in force, and its last update."""
    if spec is None:
        return None
    total = sum(w for _, w in split) or 1.0
    return {
        "policy": spec.policy, "min_share": spec.min_share, "update_s": spec.update_s,
        **({"epsilon": spec.explore} if spec.policy == "epsilon_greedy" else {}),
        "shares": {str(v): w / total for v, w in split},
        "p_best": {str(v): p for v, p in record.p_best.items()} if record else None,
        "outcomes": {str(v): n for v, n in record.outcomes.items()} if record else None,
        "last_update": record.updated_at if record else None,
        "updated_by": record.by if record else None,
        "updates": record.num_updates if record else 0,
        "paused": "a rollout is running" if is_paused else None,
    }
