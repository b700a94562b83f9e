"""The autoscaling signal: the per-pod series the HPA (through prometheus-adapter) and the KEDA
ScaledObject read rise while requests wait on a live mlserve and fall back to zero when they stop."""

from __future__ import annotations

import json
import re
import threading
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.cluster import poll
from tests.deploy.manifests import adapter_rules
from tests.models import write_slow_onnx
from tests.server_process import serving

WIDTH, ROWS, NUM_REQUESTS = 512, 64, 8


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    write_slow_onnx(root / "slow" / "1" / "model.onnx", width=WIDTH, depth=200)
    (root / "slow" / "model.toml").write_text("max_batch_size = 0\nmax_queue_size = 64\n")
    with serving(root, log_path=tmp_path_factory.mktemp("logs") / "mlserve.log") as proc:
        yield proc


def _per_pod(url: str) -> dict[str, float]:
    """Each series summed over models and versions, as the adapter's metricsQuery sums them per pod."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def _infer(url: str, results: list) -> None:
    x = np.full((ROWS, WIDTH), 0.5, dtype=np.float32)
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    body = json.dumps({"inputs": [tensor]})
    req = urllib.request.Request(f"{url}/v2/models/slow/infer", body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        results.append(resp.status)


def test_scaling_metrics_rise_under_load_and_fall_to_zero(slow_server):
    names = {re.match(r"^(mlserve_[a-z_]+)\{", rule["seriesQuery"]).group(1) for rule in adapter_rules()}
    assert names == {"mlserve_queue_depth", "mlserve_in_flight_requests"}
    idle = _per_pod(slow_server.url)
    assert all(idle.get(name) == 0 for name in names), idle  # exported, and zero while idle
    results: list[int] = []
    threads = [threading.Thread(target=_infer, args=(slow_server.url, results)) for _ in range(NUM_REQUESTS)]
    for thread in threads:
        thread.start()
    peak: dict[str, float] = {}

    def waiting() -> bool:
        for name, value in _per_pod(slow_server.url).items():
            peak[name] = max(peak.get(name, 0.0), value)
        return peak.get("mlserve_in_flight_requests", 0) >= 3 and peak.get("mlserve_queue_depth", 0) >= 2

    poll(waiting, timeout=60, interval=0.05)
    for thread in threads:
        thread.join(120)
    assert results == [200] * NUM_REQUESTS
    poll(lambda: all(_per_pod(slow_server.url)[name] == 0 for name in names), timeout=30)
    print(f"peak per pod: in flight {peak['mlserve_in_flight_requests']:.0f}, "
          f"queue depth {peak['mlserve_queue_depth']:.0f}; both back to 0")
