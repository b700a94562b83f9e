"""Optimize jobs behind two real replicas sharing one real redis-server: a job started on one is seen
from the other (`GET /admin/jobs/{id}`, with its owner) and cancelled through the other."""

from __future__ import annotations

import uuid

from tests.optimize.test_admin_job import _repo, _start, _wait
from tests.server.http import call
from tests.server_process import serving
from tests.state.conftest import redis_server  # noqa: F401  (one real redis-server)


def test_a_job_is_seen_and_cancelled_through_the_other_replica(tmp_path, redis_server):
    repo = _repo(tmp_path)
    state = ["--state", redis_server.url]
    env = {"MLSERVE_STATE_PREFIX": f"o-{uuid.uuid4().hex[:8]}"}
    with serving(repo, *state, log_path=tmp_path / "a.log", env=env) as a, \
            serving(repo, *state, log_path=tmp_path / "b.log", env=env) as b:
        job = _start(a.url, passes=["int8_dynamic", "int8_static"], data="val.npz", timing_s=30)
        seen = call(f"{b.url}/admin/jobs/{job['id']}")
        assert seen.status == 200 and seen.body["state"] == "running", seen.body
        assert seen.body["owner"].endswith(f":{a.proc.pid}"), seen.body
        assert call(f"{b.url}/admin/jobs/0123456789abcdef").status == 404
        _wait(a.url, job["id"], lambda j: j["progress"])
        cancelled = call(f"{b.url}/admin/jobs/{job['id']}", method="DELETE")
        assert cancelled.status == 200 and cancelled.body["state"] == "cancelled", cancelled.body
        assert call(f"{a.url}/admin/jobs/{job['id']}").body["state"] == "cancelled"
