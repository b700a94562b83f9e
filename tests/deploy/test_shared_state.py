"""Three real replicas behind nginx sharing one real redis-server (deploy/local/replicas.py --state
redis): an admin change is in force on every replica within a second, feedback sent through the load
balancer is credited whichever replica answered, a rolling restart of every replica keeps the
experiment, and a Redis killed under load fails no inference and the replicas agree again once it
is back. Each replica is read directly, not through nginx."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mlserve.examples import write_identity_onnx
from tests.deploy.cluster import SteadyLoad, call_json, infer, poll, redis_replicas

pytestmark = [
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed (Debian package nginx-light)"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed (Debian package redis-server)"),
]
AB_TOML = """version_policy = { all = true }
[traffic]
split = { "1" = 50, "2" = 50 }
"""




def _repository(root: Path) -> Path:
    for model in ("ab", "cv"):
        for version in ("1", "2"):
            write_identity_onnx(root / model / version / "model.onnx", "FP32")
        (root / model / "model.toml").write_text(AB_TOML)
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with redis_replicas(["--models", str(_repository(tmp_path_factory.mktemp("repo")))],
                        tmp_path_factory.mktemp("replicas")) as replicas:
        yield replicas


def _in_force_everywhere(cluster, model: str, split: dict) -> float:
    """Seconds until every replica, read directly, has `split` in force."""
    return poll(lambda: all(call_json(f"{r.url}/admin/models/{model}/traffic")[1]["split"] == split
                            for r in cluster.replicas), timeout=5, interval=0.02)


def test_an_admin_change_through_nginx_is_in_force_on_every_replica_within_a_second(cluster):
    status, view = call_json(cluster.url + "/admin/models/ab/traffic", {"split": {"1": 10, "2": 90}}, "PUT")
    assert status == 200 and view["split"] == {"1": 10.0, "2": 90.0}
    assert _in_force_everywhere(cluster, "ab", {"1": 10.0, "2": 90.0}) < 1.0
    status, _ = call_json(cluster.url + "/admin/models/ab/traffic", {"split": {"1": 50, "2": 50}}, "PUT")
    assert status == 200 and _in_force_everywhere(cluster, "ab", {"1": 50.0, "2": 50.0}) < 1.0


def test_300_feedbacks_through_nginx_are_all_credited_and_every_replica_shows_one_view(cluster):
    credited: dict[str, list[int]] = {"1": [], "2": []}
    for i in range(300):
        body = {"id": f"fb{i}", "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
        status, answer = call_json(cluster.url + "/v2/models/ab/infer", body, "POST")
        assert status == 200, answer
        value = i % 3 == 0
        status, ack = call_json(cluster.url + "/v2/models/ab/feedback", {"id": f"fb{i}", "value": int(value)}, "POST")
        assert status == 200 and ack["version"] == answer["model_version"], ack
        credited[answer["model_version"]].append(int(value))
    assert call_json(cluster.url + "/v2/models/ab/feedback", {"id": "fb0", "value": 1}, "POST")[0] == 400  # once only
    views = [call_json(f"{r.url}/admin/models/ab/experiment")[1] for r in cluster.replicas]
    for view in views:
        for version, values in credited.items():
            row = view["versions"][version]
            assert row["outcomes"] == len(values) and row["mean"] == pytest.approx(sum(values) / len(values))
    rows = [{v: {k: row.get(k) for k in ("requests", "outcomes", "mean", "p_value", "decision")}
             for v, row in view["versions"].items()} for view in views]
    assert rows[0] == rows[1] == rows[2]
    assert sum(row["requests"] for row in rows[0].values()) >= 300


def _requests_seen(replica, model: str) -> int:
    view = call_json(f"{replica.url}/admin/models/{model}/experiment")[1]
    return sum(row["requests"] for row in view["versions"].values())


def test_redis_killed_under_load_fails_no_inference_and_the_replicas_agree_once_it_is_back(cluster):
    redis = cluster.redis
    with SteadyLoad(cluster.url, "cv", num_threads=4, pause_s=0.01, max_s=60) as load:
        load.wait_for(20)
        redis.kill()
        poll(lambda: all(b"mlserve_state_backend_up{backend=\"redis\"} 0.0" in urllib.request.urlopen(
            f"{r.url}/metrics", timeout=10).read() for r in cluster.replicas), timeout=10)
        load.wait_for(100)  # serving on the last state, counting locally
        status, reply = call_json(cluster.url + "/admin/models/cv/traffic", {"split": {"1": 20, "2": 80}}, "PUT")
        assert status == 503 and "state store" in reply["error"]  # refused, so no replica drifts
        redis.start()
        load.wait_for(50)
    assert not load.failures and load.answers[200] == load.total, load.failures[:5]
    # Every request was counted once, locally while Redis was away, and the counts reach Redis on its return.
    seen: list[int] = []

    def agreed() -> bool:
        seen[:] = [_requests_seen(r, "cv") for r in cluster.replicas]
        return seen == [load.total] * 3

    try:
        poll(agreed, timeout=10)
    except AssertionError:
        raise AssertionError(f"requests counted by each replica {seen}, answered {load.total}") from None
    status, _ = call_json(cluster.url + "/admin/models/cv/traffic", {"split": {"1": 20, "2": 80}}, "PUT")
    assert status == 200 and _in_force_everywhere(cluster, "cv", {"1": 20.0, "2": 80.0}) < 1.0
    assert infer(cluster.url, "cv").status == 200


def test_a_rolling_restart_of_every_replica_keeps_the_experiment(cluster):
    before = call_json(f"{cluster.replicas[0].url}/admin/models/ab/experiment")[1]["versions"]
    body = {"id": "before-restart", "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    status, answer = call_json(cluster.url + "/v2/models/ab/infer", body, "POST")
    assert status == 200
    assert cluster.rolling_restart() == [0, 0, 0]
    # Feedback for a request answered before any replica restarted is still credited.
    status, ack = call_json(cluster.url + "/v2/models/ab/feedback", {"id": "before-restart", "value": 1}, "POST")
    assert status == 200 and ack["version"] == answer["model_version"]
    for replica in cluster.replicas:
        after = call_json(f"{replica.url}/admin/models/ab/experiment")[1]["versions"]
        for version, row in before.items():
            credited = int(version == answer["model_version"])
            assert after[version]["outcomes"] == row["outcomes"] + credited
            assert after[version]["requests"] == row["requests"] + credited
