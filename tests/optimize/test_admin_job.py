"""The admin route runs an optimize job in a child process: progress while it runs, the table and
the published version after, a canary rollout when asked, cancel that leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time

import numpy as np
import pytest

from tests.optimize.models import write_data, write_torchscript
from tests.server.http import call, infer_body, output
from tests.server.inproc import app_client, config_for
from tests.processes import wait_gone
from tests.server_process import MlserveProcess, serving


def _repo(tmp_path):
    repo = tmp_path / "models"
    folder = write_torchscript(repo)
    shutil.copy(write_data(tmp_path / "val.npz"), folder / "val.npz")
    return repo


def _wait(url: str, job_id: str, done, timeout: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = call(f"{url}/admin/jobs/{job_id}").body
        if done(job):
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s: {job}")


def _start(url: str, **body) -> dict:
    answer = call(f"{url}/admin/models/tiny/optimize", body)
    assert answer.status == 202, answer.body
    return answer.body


def test_job_reports_progress_publishes_and_rolls_out_a_canary(tmp_path):
    repo = _repo(tmp_path)
    with serving(repo, log_path=tmp_path / "server.log") as server:
        job = _start(server.url, passes=["int8_dynamic"], data="val.npz", timing_s=0.1, max_top1_drop=0.05)
        assert job["state"] == "running" and job["model"] == "tiny"
        seen = _wait(server.url, job["id"], lambda j: j["progress"])
        assert seen["progress"][0] == {"event": "pass", "name": "source", "state": "measuring"}
        done = _wait(server.url, job["id"], lambda j: j["state"] != "running")
        assert done["state"] == "succeeded", done
        assert [r["name"] for r in done["rows"]] == ["source", "export", "int8_dynamic"]
        assert done["published_version"] == 2 and done["deployment"]["loaded"] is True
        x = np.load(tmp_path / "val.npz")["x"][:8]
        answer = call(f"{server.url}/v2/models/tiny/versions/2/infer", infer_body(x))
        assert answer.status == 200 and output(answer).shape == (8, 4)

        canary = _start(server.url, passes=["graph_opt"], data="val.npz", timing_s=0.1, version=1,
                        rollout={"steps": [10, 100], "interval_s": 3600})
        done = _wait(server.url, canary["id"], lambda j: j["state"] != "running")
        assert done["state"] == "succeeded" and done["published_version"] == 3, done
        rollout = call(f"{server.url}/admin/models/tiny/rollout").body["rollout"]
        assert rollout["version"] == "3" and rollout["status"] == "running" and rollout["percent"] == 10
    assert not list(repo.joinpath("tiny").glob(".optimize-*"))


def test_cancel_stops_the_child_and_leaves_nothing(tmp_path):
    repo = _repo(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with serving(repo, log_path=tmp_path / "server.log", env={"TMPDIR": str(scratch)}) as server:
        job = _start(server.url, passes=["int8_dynamic", "int8_static"], data="val.npz", timing_s=30)
        _wait(server.url, job["id"], lambda j: j["progress"])
        second = call(f"{server.url}/admin/models/tiny/optimize", {"passes": ["graph_opt"], "data": "val.npz"})
        assert second.status == 400 and job["id"] in second.body["error"]
        cancelled = call(f"{server.url}/admin/jobs/{job['id']}", method="DELETE")
        assert cancelled.status == 200 and cancelled.body["state"] == "cancelled"
        assert call(f"{server.url}/admin/jobs/{job['id']}").body["state"] == "cancelled"
        try:
            os.kill(job["pid"], 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive
        assert list(scratch.iterdir()) == []
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["1", "model.toml"]


def test_bad_requests_are_refused_by_name(tmp_path):
    """Refusals only, nothing runs: in process (the process is not what is under test)."""
    repo = _repo(tmp_path)
    unbounded = [("timing_s", 1e308), ("timing_s", 0.001), ("calibration_rows", 10**9),
                 ("calibration_rows", 2.5), ("min_gain", 1e308), ("max_abs_diff", 1e300),
                 ("max_top1_drop", 2), ("min_cosine", 1.5), ("sparsity", 1), ("version", 2**40)]

    async def scenario():
        async with app_client(config_for(repo)) as client:
            async def post(path: str, body: dict) -> tuple[int, dict]:
                resp = await client.post(path, json=body)
                return resp.status, await resp.json()

            status, body = await post("/admin/models/tiny/optimize", {"passes": ["export"], "speed": "max"})
            assert status == 400 and "speed" in body["error"]
            status, body = await post("/admin/models/tiny/optimize", {"passes": ["warp"]})
            assert status == 400 and "warp" in body["error"]
            status, body = await post("/admin/models/tiny/optimize", {"passes": [1]})
            assert status == 400 and "'passes'" in body["error"], body
            assert (await post("/admin/models/nope/optimize", {}))[0] == 404
            assert (await client.get("/admin/jobs/0123456789abcdef")).status == 404
            for key, value in unbounded:
                status, body = await post("/admin/models/tiny/optimize", {"passes": ["export"], key: value})
                assert status == 400 and repr(key) in body["error"], (key, value, body)
            assert (await client.get("/admin/jobs/0123456789abcdef")).status == 404

    asyncio.run(scenario())
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["1", "model.toml"]


def test_runs_have_a_time_limit_and_a_server_wide_cap(tmp_path):
    repo = _repo(tmp_path)
    shutil.copy(tmp_path / "val.npz", write_torchscript(repo, "other") / "val.npz")
    env = {"MLSERVE_JOBS_OPTIMIZE_TIMEOUT_S": "4", "MLSERVE_JOBS_OPTIMIZE_MAX_RUNNING": "1"}
    with serving(repo, log_path=tmp_path / "server.log", env=env) as server:
        slow = _start(server.url, passes=["int8_dynamic", "int8_static"], data="val.npz", timing_s=60)
        capped = call(f"{server.url}/admin/models/other/optimize", {"passes": ["graph_opt"], "data": "val.npz"})
        assert capped.status == 429 and "optimize_max_running" in capped.body["error"], capped.body
        assert capped.headers["Retry-After"]
        failed = _wait(server.url, slow["id"], lambda j: j["state"] != "running", timeout=60)
        assert failed["state"] == "failed" and "time limit of 4 s" in failed["error"], failed
        with pytest.raises(ProcessLookupError):
            os.kill(slow["pid"], 0)
        other = call(f"{server.url}/admin/models/other/optimize", {"passes": ["graph_opt"], "data": "val.npz"})
        assert other.status == 202, other.body
        call(f"{server.url}/admin/jobs/{other.body['id']}", method="DELETE")
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["1", "model.toml"]


def test_a_killed_server_leaves_no_worker_and_the_next_start_sweeps_its_job_folder(tmp_path):
    """kill -9 of the server mid-job: the worker dies with it (it could otherwise still publish);
    the job folder it left in TMPDIR is removed when the next server starts."""
    repo = _repo(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch)}
    first = MlserveProcess(repo, log_path=tmp_path / "first.log", env=env).wait_ready()
    worker = None
    try:
        job = _start(first.url, passes=["int8_dynamic", "int8_static"], data="val.npz", timing_s=30)
        worker = job["pid"]
        _wait(first.url, job["id"], lambda j: j["progress"])
        first.signal(signal.SIGKILL)
        first.proc.wait(30)
        assert wait_gone([worker]) == [], "the optimize worker outlived the server"
    finally:
        first.stop()
        if worker is not None and wait_gone([worker], 0):
            os.kill(worker, signal.SIGKILL)
    left = [p.name for p in scratch.iterdir()]
    assert len(left) == 1 and left[0].startswith(f"mlserve-job-{first.proc.pid}-"), left
    with serving(repo, log_path=tmp_path / "second.log", env=env):
        assert not [p for p in scratch.iterdir() if p.name.startswith("mlserve-job-")]
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["1", "model.toml"]
