"""A short history of each version's traffic, for the status page's sparklines and `mlserve status`.

Design: every `interval_s` the sampler reads the cumulative Prometheus families once (request
counts, latency and batch histograms, LLM gauges) and turns the difference from the previous
reading into one `Point` per version: requests/s, error rate, p50/p99 from the histogram buckets
(Prometheus' `histogram_quantile` interpolation), mean batch rows, queue depth. Nothing is added
to the request path; the last `num_points` points per version are kept, and a version that stops
appearing in the families is forgotten. `sample` may run on any thread (prometheus_client locks
its own values); `view` hands out copies.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Mapping

from mlserve.monitor.metrics import Metrics

VersionKey = tuple[str, str]
ERROR_CODES_FROM = 500
"""Responses counted as errors: 5xx, and 429 (shed) which the breaker counts too."""


@dataclass(slots=True)
class Totals:
    """Cumulative values of one version at one reading."""

    requests: float = 0.0
    errors: float = 0.0
    latency: dict[float, float] = field(default_factory=dict)
    """Upper bound -> cumulative count, as the _bucket samples give them."""
    batch_rows: float = 0.0
    batches: float = 0.0
    ttft: dict[float, float] = field(default_factory=dict)
    itl: dict[float, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Point:
    """One interval of one version; rates and percentiles are None when nothing happened in it."""

    t: float
    requests: float
    rps: float
    error_rate: float | None
    p50_s: float | None
    p99_s: float | None
    batch_size: float | None
    queue_depth: float
    ttft_p50_s: float | None = None
    itl_p50_s: float | None = None
    llm_running: float | None = None
    llm_waiting: float | None = None
    kv_used: float | None = None
    kv_total: float | None = None


POINT_FIELDS = tuple(f.name for f in fields(Point))


def bucket_quantile(q: float, before: Mapping[float, float], after: Mapping[float, float]) -> float | None:
    """The q-quantile of the observations between two readings of a histogram, interpolated
    linearly inside the bucket that holds it (the highest finite bound when it lies in +Inf)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


class MetricsHistory:
    """Owns the last readings and the recent points of every version."""

    def __init__(self, metrics: Metrics, interval_s: float, num_points: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.interval_s = interval_s
        self._metrics = metrics
        self._clock = clock
        self._points: dict[VersionKey, deque[Point]] = {}
        self._last: dict[VersionKey, Totals] = {}
        self._last_time: float | None = None
        self._num_points = num_points
        self._lock = threading.Lock()

    def sample(self, queue_depths: Mapping[VersionKey, int]) -> None:
        """Read the families once and append a point per version seen in both readings;
        `queue_depths` names every loaded version (its queued requests now)."""
        now = self._clock()
        totals = read_totals(self._metrics)
        for key in queue_depths:  # a loaded version with no traffic yet has no series: zeros
            totals.setdefault(key, Totals())
        with self._lock:
            elapsed = now - self._last_time if self._last_time is not None else 0.0
            for key, current in totals.items():
                previous = self._last.get(key)
                if previous is None or elapsed <= 0:
                    continue
                point = _point(now, elapsed, previous, current, queue_depths.get(key, 0))
                self._points.setdefault(key, deque(maxlen=self._num_points)).append(point)
            for gone in set(self._points) - set(totals):
                del self._points[gone]
            self._last, self._last_time = totals, now

    def series(self, model: str, version: str) -> dict[str, list] | None:
        """Columns of this version's points (t, rps, ...), oldest first; None before its first point."""
        with self._lock:
            points = list(self._points.get((model, version), ()))
        if not points:
            return None
        return {name: [getattr(p, name) for p in points] for name in POINT_FIELDS}

    def latest(self, model: str, version: str) -> dict | None:
        with self._lock:
            points = self._points.get((model, version))
            return asdict(points[-1]) if points else None


def _point(now: float, elapsed: float, before: Totals, after: Totals, depth: int) -> Point:
    requests = max(0.0, after.requests - before.requests)
    batches = after.batches - before.batches
    gauges = after.gauges
    used, free = gauges.get("kv_used"), gauges.get("kv_free")
    return Point(
        t=now, requests=requests, rps=requests / elapsed,
        error_rate=(after.errors - before.errors) / requests if requests else None,
        p50_s=bucket_quantile(0.5, before.latency, after.latency),
        p99_s=bucket_quantile(0.99, before.latency, after.latency),
        batch_size=(after.batch_rows - before.batch_rows) / batches if batches > 0 else None,
        queue_depth=float(depth),
        ttft_p50_s=bucket_quantile(0.5, before.ttft, after.ttft),
        itl_p50_s=bucket_quantile(0.5, before.itl, after.itl),
        llm_running=gauges.get("running"), llm_waiting=gauges.get("waiting"),
        kv_used=used, kv_total=used + free if used is not None and free is not None else None,
    )


def read_totals(metrics: Metrics) -> dict[VersionKey, Totals]:
    """One reading of every per-version family the history uses."""
    out: dict[VersionKey, Totals] = {}

    def at(labels: Mapping[str, str]) -> Totals:
        return out.setdefault((labels["model"], labels["version"]), Totals())

    for sample in _samples(metrics.requests):
        if sample.name.endswith("_total"):
            totals = at(sample.labels)
            totals.requests += sample.value
            code = sample.labels.get("code", "")
            if code.isdigit() and (int(code) >= ERROR_CODES_FROM or int(code) == 429):
                totals.errors += sample.value
    _read_buckets(metrics.request_latency, at, "latency")
    _read_buckets(metrics.llm_ttft, at, "ttft")
    _read_buckets(metrics.llm_itl, at, "itl")
    for sample in _samples(metrics.batch_size):
        if sample.name.endswith("_sum"):
            at(sample.labels).batch_rows = sample.value
        elif sample.name.endswith("_count"):
            at(sample.labels).batches = sample.value
    for name, family in (("running", metrics.llm_running), ("waiting", metrics.llm_waiting),
                         ("kv_used", metrics.llm_kv_blocks_used), ("kv_free", metrics.llm_kv_blocks_free)):
        for sample in _samples(family):
            at(sample.labels).gauges[name] = sample.value
    out.pop(("_unknown", ""), None)
    return out


def _read_buckets(family, at, attribute: str) -> None:
    for sample in _samples(family):
        if sample.name.endswith("_bucket"):
            getattr(at(sample.labels), attribute)[float(sample.labels["le"])] = sample.value


def _samples(family):
    for metric in family.collect():
        yield from metric.samples
