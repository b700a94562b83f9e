"""The response cache's shared level across real replicas (deploy/local/replicas.py --state redis):
an input computed on one replica is answered from the shared cache on another, which never runs the
model for it. Each replica is read directly, not through nginx."""

from __future__ import annotations

import json
import shutil
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlserve.examples import write_identity_onnx
from tests.deploy.cluster import poll, redis_replicas

pytestmark = [
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed (Debian package nginx-light)"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed (Debian package redis-server)"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_identity_onnx(repo / "cached" / "1" / "model.onnx", "FP32")
    (repo / "cached" / "model.toml").write_text("cache_size = 16\nshared_cache_ttl_s = 60\n")
    with redis_replicas(["--models", str(repo)], tmp_path_factory.mktemp("replicas"), num_replicas=2) as replicas:
        yield replicas


def _infer(url: str, data: list[float]) -> list[float]:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": data}]}).encode()
    req = urllib.request.Request(f"{url}/v2/models/cached/infer", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["outputs"][0]["data"]


def _executions(url: str) -> int:
    with urllib.request.urlopen(f"{url}/v2/models/cached/versions/1/stats", timeout=30) as resp:
        return json.loads(resp.read())["model_stats"][0]["execution_count"]


def _cache_counts(url: str) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return {(s.name, s.labels["level"]): s.value for fam in text_string_to_metric_families(text)
            if fam.name in ("mlserve_cache_hits", "mlserve_cache_misses") for s in fam.samples
            if s.name.endswith("_total") and s.labels.get("model") == "cached"}


def test_an_input_computed_on_one_replica_is_answered_from_the_shared_cache_on_another(cluster):
    import redis

    a, b = cluster.replicas
    data = [4.0, 5.0, 6.0]
    assert _infer(a.url, data) == data
    # A shares the response after it answered: wait for the entry to be in Redis.
    client = redis.Redis.from_url(cluster.redis.url)
    poll(lambda: any(not k.endswith(b":index") for k in client.scan_iter(b"mlserve:cache:cached:1:*")), timeout=10)
    runs_before, counts_before = _executions(b.url), _cache_counts(b.url)
    assert _infer(b.url, data) == data
    counts = _cache_counts(b.url)
    assert counts[("mlserve_cache_hits_total", "shared")] == counts_before.get(("mlserve_cache_hits_total", "shared"), 0) + 1
    assert _executions(b.url) == runs_before  # B never ran the model for this input
    assert _infer(b.url, data) == data  # now from B's own local level
    after = _cache_counts(b.url)
    assert after[("mlserve_cache_hits_total", "local")] == counts.get(("mlserve_cache_hits_total", "local"), 0) + 1
    assert after[("mlserve_cache_hits_total", "shared")] == counts[("mlserve_cache_hits_total", "shared")]
    assert _executions(b.url) == runs_before
    # A fresh input on B is computed there: misses at both levels, one more execution.
    assert _infer(b.url, [7.0, 8.0, 9.0]) == [7.0, 8.0, 9.0]
    assert _executions(b.url) == runs_before + 1
    assert _cache_counts(b.url)[("mlserve_cache_misses_total", "shared")] == counts.get(("mlserve_cache_misses_total", "shared"), 0) + 1
