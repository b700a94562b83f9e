"""Triton-style inference statistics per model version, fed once per executed batch.

A batch's compute time (gathering inputs, the engine call, splitting outputs) is counted as
`compute_infer` for every request in it, as Triton counts a batch's durations for each request;
mlserve does not time input gathering and output splitting apart, so `compute_input` and
`compute_output` count the same requests with zero time. `success` and `fail` time a request from
entering its version's queue to its batch finishing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Duration:
    """A count and the nanoseconds they took together."""

    count: int = 0
    ns: int = 0

    def add(self, count: int, ns: int) -> None:
        self.count += count
        self.ns += ns

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class VersionStats:
    """Counters of one model version since it was loaded."""

    inference_count: int = 0
    """Rows inferred (a request of 4 rows counts 4), as Triton counts inferences."""
    execution_count: int = 0
    """Batches the engine ran."""
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    batches: dict[int, Duration] = field(default_factory=dict)
    """Batches by their number of rows: how many ran and their compute time."""

    def record(self, num_requests: int, num_rows: int, queue_s: tuple[float, ...], compute_s: float,
               failed: bool) -> None:
        compute_ns = int(compute_s * 1e9)
        self.execution_count += 1
        self.last_inference_ms = int(time.time() * 1000)
        waited_ns = [int(q * 1e9) for q in queue_s]
        self.queue.add(num_requests, sum(waited_ns))
        outcome = self.fail if failed else self.success
        outcome.add(num_requests, sum(waited_ns) + compute_ns * num_requests)
        if failed:
            return
        self.inference_count += num_rows
        self.compute_infer.add(num_requests, compute_ns * num_requests)
        self.batches.setdefault(num_rows, Duration()).add(1, compute_ns)


class InferenceStatistics:
    """Every version's VersionStats; a version that is loaded again starts from zero."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, str], VersionStats] = {}

    def version(self, model: str, version: str) -> VersionStats:
        return self._versions.setdefault((model, version), VersionStats())

    def reset(self, model: str, version: str) -> None:
        self._versions.pop((model, version), None)

    def get(self, model: str, version: str) -> VersionStats:
        """The counters, or zeros for a version that has not run yet (not stored)."""
        return self._versions.get((model, version)) or VersionStats()
