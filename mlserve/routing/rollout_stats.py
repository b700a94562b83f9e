"""A rollout step's health, mergeable across replicas: per-version request and error counts and a
latency histogram with fixed buckets, so every replica's counts add up in one store hash and the
p99 comes from the sum.

Buckets are log-spaced (each RATIO times the one before, from LOW_S up), so a quantile read from
them is within RATIO of the exact one; a request costs one dict update on its replica (the counts go
out in SharedExperiments' batched flush, never one store call per request).

Hash fields, per version v: `r:v` requests, `e:v` errors, `b:v:i` successful requests whose latency
fell in bucket i (errors carry no latency, as before).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

LOW_S = 1e-4
RATIO = 1.1
NUM_BUCKETS = 150
"""Bucket i holds latencies in (LOW_S * RATIO**(i-1), LOW_S * RATIO**i]; the last one everything above
(about 160 s); the first everything up to 0.1 ms."""


def bucket_of(latency_s: float) -> int:
    if latency_s <= LOW_S:
        return 0
    return min(NUM_BUCKETS - 1, math.ceil(math.log(latency_s / LOW_S) / math.log(RATIO) - 1e-9))


def bucket_value(index: int) -> float:
    """The latency a bucket stands for: the geometric middle of its bounds."""
    return LOW_S if index == 0 else LOW_S * RATIO ** (index - 0.5)


def stats_key(model: str, rollout_id: str, step: int) -> str:
    """The store hash of one rollout step's counts (a new step starts from nothing, as it always did)."""
    return f"rollout:{model}:stats:{rollout_id}:{step}"


def increments(version: int, latency_s: float, ok: bool) -> dict[str, float]:
    if ok:
        return {f"r:{version}": 1.0, f"b:{version}:{bucket_of(latency_s)}": 1.0}
    return {f"r:{version}": 1.0, f"e:{version}": 1.0}


@dataclass(slots=True)
class StepHealth:
    """Requests, errors and the latency histogram of one version over one step."""

    num_requests: int = 0
    num_errors: int = 0
    buckets: dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_fields(cls, fields: dict[str, float], version: int) -> StepHealth:
        """One version's health out of a step hash (every replica's counts, summed)."""
        health = cls(int(fields.get(f"r:{version}", 0)), int(fields.get(f"e:{version}", 0)))
        prefix = f"b:{version}:"
        for name, count in fields.items():
            index = name[len(prefix):]
            if name.startswith(prefix) and index.isdigit() and int(index) < NUM_BUCKETS and count > 0:
                health.buckets[int(index)] = int(count)
        return health

    def observe(self, latency_s: float, ok: bool) -> None:
        self.num_requests += 1
        if ok:
            index = bucket_of(latency_s)
            self.buckets[index] = self.buckets.get(index, 0) + 1
        else:
            self.num_errors += 1

    @property
    def error_rate(self) -> float:
        return self.num_errors / self.num_requests if self.num_requests else 0.0

    def quantile(self, q: float) -> float | None:
        """The latency under which a share `q` of the successful requests fell (None: none yet)."""
        total = sum(self.buckets.values())
        if total == 0:
            return None
        rank, seen = max(1, math.ceil(q * total)), 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return bucket_value(index)
        return bucket_value(max(self.buckets))
