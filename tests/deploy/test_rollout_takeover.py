"""A canary rollout behind nginx with three real replicas and a real redis-server: started through
the load balancer, it is driven by one replica; that replica is killed (SIGKILL, no hand-over) and
another takes the lease and carries the rollout to its end; every replica, the killed one restarted
included, shows the same final state. Its own small cluster (one model), so its timing is its own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlserve.examples import write_identity_onnx
from tests.deploy.cluster import SteadyLoad, call_json, poll, redis_replicas

pytestmark = [
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed (Debian package nginx-light)"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed (Debian package redis-server)"),
]
TOML = 'version_policy = { all = true }\n[traffic]\nsplit = { "1" = 100 }\n'




def _repository(root: Path) -> Path:
    for version in ("1", "2"):
        write_identity_onnx(root / "ro" / version / "model.onnx", "FP32")
    (root / "ro" / "model.toml").write_text(TOML)
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with redis_replicas(["--models", str(_repository(tmp_path_factory.mktemp("repo")))],
                        tmp_path_factory.mktemp("replicas")) as replicas:
        yield replicas


def _rollout(replica) -> dict:
    """The replica's view of the rollout ({} before the start has reached it)."""
    return call_json(f"{replica.url}/admin/models/ro/rollout")[1]["rollout"] or {}


def _final(replica) -> tuple:
    rollout, traffic = _rollout(replica), call_json(f"{replica.url}/admin/models/ro/traffic")[1]
    return rollout["id"], rollout["status"], rollout["step"], traffic["split"], traffic["stable"]


def test_a_rollout_whose_driver_is_killed_completes_on_another_replica(cluster):
    plan = {"version": "2", "steps": [50, 100], "interval_s": 2.0, "min_requests": 5,
            "max_error_rate_increase": 0.5, "max_p99_ratio": 100}
    with SteadyLoad(cluster.url, "ro", num_threads=3, pause_s=0.02, max_s=60) as load:
        load.wait_for(10)
        status, view = call_json(cluster.url + "/admin/models/ro/rollout", plan, "POST")
        assert status == 202 and view["rollout"]["status"] == "running", view
        first = cluster.replicas[0]
        poll(lambda: _rollout(first).get("driver") is not None, timeout=5, interval=0.05)
        driver_id = _rollout(first)["driver"]
        by_pid = {f":{r.proc.pid}": r for r in cluster.replicas}
        driver = next(r for suffix, r in by_pid.items() if driver_id.endswith(suffix))
        survivors = [r for r in cluster.replicas if r is not driver]
        for replica in survivors:  # the rollout's split is in force on every replica
            assert call_json(f"{replica.url}/admin/models/ro/traffic")[1]["split"] == {"1": 50.0, "2": 50.0}
        driver.proc.kill()  # no hand-over: the lease runs out and another replica takes it
        driver.proc.wait(10)
        poll(lambda: _rollout(survivors[0])["driver"] not in (None, driver_id), timeout=10)
        assert any(_rollout(survivors[0])["driver"].endswith(f":{r.proc.pid}") for r in survivors)
        poll(lambda: all(_rollout(r)["status"] != "running" for r in survivors), timeout=20)
        load.wait_for(10)
    assert _rollout(survivors[0])["status"] == "promoted", _rollout(survivors[0])
    driver.start()  # the killed replica comes back and takes the final state
    driver.wait_ready(60)
    finals = [_final(r) for r in cluster.replicas]
    assert finals[0][1:] == ("promoted", 1, {"2": 100.0}, "2") and finals.count(finals[0]) == 3, finals
