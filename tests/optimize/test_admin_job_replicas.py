"""Optimize jobs behind two real replicas sharing one real redis-server: a job started on one is seen
from the other (`GET /admin/jobs/{id}`, with its owner) and cancelled through the other, and reads as
failed there once the replica running it is killed."""

from __future__ import annotations

import time
import uuid

from tests.optimize.test_admin_job import _repo, _start, _wait
from tests.server.http import call
from tests.server_process import MlserveProcess, serving
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


def test_a_job_whose_replica_is_killed_reads_as_failed_from_the_other_once_its_lease_runs_out(tmp_path, redis_server):
    """The replica running a job renews its lease while the job runs; killed (its child dies with it),
    the lease runs out and the other replica reads the job as failed, naming that replica, where it
    read `running` before."""
    repo = _repo(tmp_path)
    state = ["--state", redis_server.url]
    env = {"MLSERVE_STATE_PREFIX": f"o-{uuid.uuid4().hex[:8]}", "MLSERVE_JOBS_LEASE_S": "3"}
    with serving(repo, *state, log_path=tmp_path / "b.log", env=env) as b:
        a = MlserveProcess(repo, *state, log_path=tmp_path / "a.log", env=env).wait_ready()
        try:
            job = _start(a.url, passes=["int8_dynamic", "int8_static"], data="val.npz", timing_s=30)
            _wait(a.url, job["id"], lambda j: j["progress"])
            started = time.monotonic()
            while time.monotonic() - started < 4:  # past a lease: renewed all along
                seen = call(f"{b.url}/admin/jobs/{job['id']}").body
                assert seen["state"] == "running", seen
                time.sleep(0.1)
        finally:
            a.proc.kill()
            a.proc.wait()
        failed = _wait(b.url, job["id"], lambda j: j["state"] != "running", timeout=30)
        assert failed["state"] == "failed" and f"replica {failed['owner']} stopped holding the job" in failed["error"]
        assert failed["owner"].endswith(f":{a.proc.pid}"), failed
