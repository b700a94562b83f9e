"""The status page's metrics history: points per version from real Prometheus families, with an
injected clock; percentiles checked against the observations themselves."""

from __future__ import annotations

import numpy as np

from mlserve.monitor.history import MetricsHistory, bucket_quantile
from mlserve.monitor.metrics import LATENCY_BUCKETS, Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _bucket_of(value: float) -> tuple[float, float]:
    bounds = (0.0, *LATENCY_BUCKETS)
    i = int(np.searchsorted(LATENCY_BUCKETS, value))  # first bound >= value: Prometheus' le
    return bounds[i], bounds[i + 1]


def test_points_give_rates_error_share_batch_rows_and_bucketed_percentiles():
    metrics, clock = Metrics(), Clock()
    history = MetricsHistory(metrics, interval_s=2.0, num_points=3, clock=clock)
    history.sample({("m", "1"): 0})
    assert history.series("m", "1") is None  # one reading: nothing to difference yet

    rng = np.random.default_rng(3)
    latencies = rng.lognormal(np.log(0.004), 0.8, 40)
    for i, latency in enumerate(latencies):
        code = "500" if i % 10 == 0 else ("429" if i % 10 == 1 else "200")
        metrics.requests.labels("m", "1", "v2", code).inc()
        metrics.request_latency.labels("m", "1").observe(latency)
    metrics.requests.labels("m", "1", "v2", "400").inc()  # bad input is the client's error, not ours
    for rows in (4, 6, 8):
        metrics.batch_size.labels("m", "1").observe(rows)
    clock.now += 2.0
    history.sample({("m", "1"): 7})

    point = history.latest("m", "1")
    assert point["requests"] == 41 and point["rps"] == 41 / 2.0
    assert point["error_rate"] == 8 / 41  # four 500s and four 429s
    assert point["batch_size"] == 6.0
    assert point["queue_depth"] == 7
    for q, name in ((0.5, "p50_s"), (0.99, "p99_s")):
        # the estimate lies in the bucket that holds the true quantile of what was observed
        low, high = _bucket_of(float(np.quantile(latencies, q, method="inverted_cdf")))
        assert low <= point[name] <= high, (name, point[name], low, high)


def test_idle_versions_get_zero_rate_and_gone_versions_are_forgotten():
    metrics, clock = Metrics(), Clock()
    history = MetricsHistory(metrics, interval_s=1.0, num_points=3, clock=clock)
    for _ in range(5):
        history.sample({("m", "1"): 0, ("m", "2"): 0})
        clock.now += 1.0
    series = history.series("m", "2")
    assert series["rps"] == [0.0, 0.0, 0.0]  # only the last num_points kept
    assert series["p50_s"] == [None, None, None] and series["error_rate"] == [None, None, None]
    assert series["t"] == [1002.0, 1003.0, 1004.0]
    history.sample({("m", "1"): 0})
    assert history.series("m", "2") is None and history.series("m", "1") is not None


def test_llm_gauges_and_token_latencies():
    metrics, clock = Metrics(), Clock()
    history = MetricsHistory(metrics, interval_s=1.0, num_points=4, clock=clock)
    history.sample({("g", "1"): 0})
    metrics.llm_kv_blocks_used.labels("g", "1").set(3)
    metrics.llm_kv_blocks_free.labels("g", "1").set(13)
    metrics.llm_running.labels("g", "1").set(2)
    metrics.llm_waiting.labels("g", "1").set(1)
    for ttft in (0.02, 0.03, 0.04):
        metrics.llm_ttft.labels("g", "1").observe(ttft)
    clock.now += 1.0
    history.sample({("g", "1"): 0})
    point = history.latest("g", "1")
    assert (point["kv_used"], point["kv_total"], point["llm_running"], point["llm_waiting"]) == (3, 16, 2, 1)
    low, high = _bucket_of(0.03)
    assert low <= point["ttft_p50_s"] <= high
    assert point["itl_p50_s"] is None


def test_bucket_quantile_interpolates_like_histogram_quantile():
    bounds = [0.1, 0.2, 0.4, float("inf")]
    before = dict.fromkeys(bounds, 0.0)
    after = dict(zip(bounds, [10.0, 30.0, 40.0, 40.0]))
    # an independent linear interpolation over the cumulative counts
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        expected = float(np.interp(q * 40, [0, 10, 30, 40], [0.0, 0.1, 0.2, 0.4]))
        assert abs(bucket_quantile(q, before, after) - expected) < 1e-12
    tail = dict(zip(bounds, [0.0, 0.0, 1.0, 5.0]))
    assert bucket_quantile(0.99, before, tail) == 0.4  # in +Inf: the highest finite bound
    assert bucket_quantile(0.5, after, after) is None
