"""In-server batch jobs over real HTTP: results against onnxruntime, refusals, cancel, resume,
metrics, and a server killed with SIGKILL mid-job that finishes the job after a restart."""

from __future__ import annotations

import asyncio
import signal
import time

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from tests.jobs.helpers import mlp_rows, read_jsonl, reference
from tests.jobs.test_batch_cli import TOL, read_output, write_input
from tests.server.http import call
from tests.server.inproc import app_client, config_for
from tests.server_process import MlserveProcess, serving


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("batch")


@pytest.fixture(scope="module")
def jobs_server(jobs_repo, batch_dir, tmp_path_factory):
    with serving(jobs_repo, "--batch-dir", str(batch_dir), log_path=tmp_path_factory.mktemp("log") / "m.log") as p:
        yield p


def wait_job(url, job_id, until, timeout=120.0):
    """Poll the job until `until(job)` holds; returns the job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = call(f"{url}/v2/batch/jobs/{job_id}")
        assert answer.status == 200, answer.body
        if until(answer.body):
            return answer.body
        assert answer.body["state"] not in ("failed", "cancelled"), answer.body
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id} never reached the wanted state: {answer.body}")


def finished(job):
    return job["state"] == "done"


def metric(url, name, **labels):
    text = call(f"{url}/metrics").body
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_job_output_equals_onnxruntime_while_live_requests_answer(jobs_server, jobs_repo, batch_dir):
    x = mlp_rows(3000, seed=11)
    write_input(batch_dir / "a.npz", x)
    created = call(f"{jobs_server.url}/v2/batch/jobs",
                   {"model": "mlp", "version": "1", "input": "a.npz", "output": "a.parquet"})
    assert created.status == 201, created.body
    job_id = created.body["id"]
    assert created.body["version"] == "1" and created.body["state"] in ("queued", "running")
    client = httpclient.InferenceServerClient(jobs_server.url.removeprefix("http://"))
    live = mlp_rows(4, seed=12)
    want = reference(jobs_repo / "mlp" / "1" / "model.onnx", live)
    job = created.body
    while job["state"] != "done":
        inp = httpclient.InferInput("x", [4, 768], "FP32")
        inp.set_data_from_numpy(live)
        np.testing.assert_allclose(client.infer("mlp", [inp], model_version="1").as_numpy("y"), want, **TOL)
        job = wait_job(jobs_server.url, job_id, lambda j: True)
    assert (job["rows_total"], job["rows_done"], job["rows_failed"]) == (3000, 3000, 0)
    rows, y = read_output(batch_dir / "a.parquet")
    assert rows.tolist() == list(range(3000))
    np.testing.assert_allclose(y, reference(jobs_repo / "mlp" / "1" / "model.onnx", x), **TOL)
    assert metric(jobs_server.url, "mlserve_batch_job_rows_total", job=job_id) == 3000
    assert metric(jobs_server.url, "mlserve_batch_job_state", job=job_id, state="done") == 1
    listed = call(f"{jobs_server.url}/v2/batch/jobs").body["jobs"]
    assert job_id in [j["id"] for j in listed]


def test_bad_requests_are_refused_and_change_nothing(jobs_server, batch_dir, tmp_path):
    url = f"{jobs_server.url}/v2/batch/jobs"
    write_input(batch_dir / "ok.npz", mlp_rows(8))
    (batch_dir / "taken.jsonl").write_text("")
    (batch_dir / "escape.npz").symlink_to(tmp_path / "outside.npz")
    before = len(call(url).body["jobs"])
    cases = [
        ({"model": "mlp", "input": str(tmp_path / "x.npz"), "output": "o.jsonl"}, 403, "outside the folder"),
        ({"model": "mlp", "input": "ok.npz", "output": "../o.jsonl"}, 403, "outside the folder"),
        ({"model": "mlp", "input": "escape.npz", "output": "o.jsonl"}, 403, "outside the folder"),
        ({"model": "mlp", "input": "ok.npz", "output": "o.jsonl", "speed": 2}, 400, "unknown key(s) ['speed']"),
        ({"model": "mlp", "input": "ok.npz"}, 400, "missing 'output'"),
        ({"model": "nope", "input": "ok.npz", "output": "o.jsonl"}, 404, "Request for unknown model: 'nope' is not found"),
        ({"model": "mlp", "version": 9, "input": "ok.npz", "output": "o.jsonl"}, 404, "'mlp' version 9 is not found"),
        ({"model": "mlp", "input": "missing.npz", "output": "o.jsonl"}, 400, "is not a file"),
        ({"model": "mlp", "input": "ok.npz", "output": "o.csv"}, 400, "must end in .npz, .jsonl, .parquet"),
        ({"model": "mlp", "input": "ok.npz", "output": "taken.jsonl"}, 400, "exists; start over with overwrite"),
        ({"model": "mlp", "input": "ok.npz", "output": "o.jsonl", "priority": 2}, 400, "priority must lie in 1..1"),
        ({"model": "mlp", "input": "s3://b/k.npz", "output": "o.jsonl"}, 400, "'output' must be s3://bucket/key too"),
        ({"model": "mlp", "input": "http://h/k.npz", "output": "o.jsonl"}, 400, "or s3://bucket/key are supported"),
        ({"model": "mlp", "input": "s3://b/", "output": "s3://b/o.jsonl"}, 400, "must be s3://bucket/key naming one"),
    ]
    for body, status, message in cases:
        answer = call(url, body)
        assert (answer.status, message in answer.body["error"]) == (status, True), (body, answer.body)
    assert call(url, b"{not json").status == 400
    assert call(f"{url}/nope").status == 404
    assert len(call(url).body["jobs"]) == before
    assert not (batch_dir / "o.jsonl").exists() and (batch_dir / "taken.jsonl").read_text() == ""


def test_errors_path_truncates_no_file_the_job_was_not_given(jobs_server, jobs_repo, batch_dir):
    """The errors file follows the output's rules: no overwrite unless asked, never a job record,
    never a file a running job writes (its output, partial, checkpoint), created exclusively."""
    url = f"{jobs_server.url}/v2/batch/jobs"
    x = mlp_rows(20000, seed=14)
    write_input(batch_dir / "e.npz", x)
    (batch_dir / "kept.txt").write_text("keep me")
    (batch_dir / "errdir").mkdir()
    running = call(url, {"model": "mlp", "version": 1, "input": "e.npz", "output": "e.jsonl"}).body["id"]
    wait_job(jobs_server.url, running, lambda j: j["rows_done"] > 0)
    record = batch_dir / ".mlserve-jobs" / f"{running}.json"
    record_bytes = record.read_bytes()
    base = {"model": "mlp", "input": "e.npz", "output": "f.jsonl"}
    cases = [
        ({"errors": "kept.txt"}, 400, "errors"),
        ({"errors": f".mlserve-jobs/{running}.json", "overwrite": True}, 403, "batch job records"),
        ({"errors": "e.jsonl.checkpoint.json", "overwrite": True}, 400, f"batch job {running} is still using"),
        ({"errors": "e.jsonl.partial", "overwrite": True}, 400, f"batch job {running} is still using"),
        ({"output": "g.jsonl", "errors": "g.jsonl.checkpoint.json"}, 400, "the output g.jsonl writes itself"),
        ({"errors": "errdir", "overwrite": True}, 400, "is a folder"),
    ]
    for extra, status, message in cases:
        answer = call(url, {**base, **extra})
        assert (answer.status, message in answer.body["error"]) == (status, True), (extra, answer.body)
    assert "exists; start over with overwrite" in call(url, {**base, "errors": "kept.txt"}).body["error"]
    assert (batch_dir / "kept.txt").read_text() == "keep me" and record.read_bytes() == record_bytes
    assert not (batch_dir / "f.jsonl.partial").exists()
    done = wait_job(jobs_server.url, running, finished)
    assert (done["rows_done"], done["rows_failed"]) == (20000, 0)
    assert [r["row"] for r in read_jsonl(batch_dir / "e.jsonl")] == list(range(20000))
    replaced = call(url, {**base, "errors": "kept.txt", "overwrite": True})
    assert replaced.status == 201, replaced.body
    wait_job(jobs_server.url, replaced.body["id"], finished)
    assert (batch_dir / "kept.txt").read_text() == ""


def test_cancel_stops_the_job_and_a_resubmit_resumes_it(jobs_server, jobs_repo, batch_dir):
    num_rows = 20000
    x = mlp_rows(num_rows, seed=13)
    write_input(batch_dir / "c.npz", x)
    body = {"model": "mlp", "input": "c.npz", "output": "c.jsonl"}
    job_id = call(f"{jobs_server.url}/v2/batch/jobs", body).body["id"]
    wait_job(jobs_server.url, job_id, lambda j: j["rows_done"] > 0)
    cancelled = call(f"{jobs_server.url}/v2/batch/jobs/{job_id}", method="DELETE")
    assert cancelled.status == 200 and cancelled.body["state"] == "cancelled", cancelled.body
    stored = orjson.loads((batch_dir / "c.jsonl.checkpoint.json").read_bytes())
    assert 0 < stored["rows_done"] < num_rows and stored["state"] == "running"
    shown = call(f"{jobs_server.url}/v2/batch/jobs/{job_id}").body
    assert (shown["state"], shown["rows_done"]) == ("cancelled", stored["rows_done"])
    assert call(f"{jobs_server.url}/v2/batch/jobs/{job_id}", method="DELETE").status == 400

    again = call(f"{jobs_server.url}/v2/batch/jobs", body)
    assert again.status == 201, again.body
    done = wait_job(jobs_server.url, again.body["id"], finished)
    assert done["rows_done"] == num_rows
    records = read_jsonl(batch_dir / "c.jsonl")
    assert [r["row"] for r in records] == list(range(num_rows))
    np.testing.assert_allclose(np.array([r["y"] for r in records], np.float32),
                               reference(jobs_repo / "mlp" / "2" / "model.onnx", x), **TOL)


def test_jobs_are_off_without_an_allowed_folder(jobs_repo):
    """The default configuration (no --batch-dir): in process, the process is not what is under test."""
    async def refused():
        async with app_client(config_for(jobs_repo)) as client:
            resp = await client.post("/v2/batch/jobs", json={"model": "mlp", "input": "a.npz", "output": "b.npz"})
            return resp.status, await resp.json()

    status, body = asyncio.run(refused())
    assert status == 403 and "jobs.allowed_dir" in body["error"], body


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_server_stopped_mid_job_finishes_it_after_restart(jobs_repo, tmp_path, sig):
    """SIGKILL: nothing runs after the signal. SIGTERM: the job stops at once (unfinished, not failed).
    The signal comes once 2048 rows are checkpointed (the chunk ending at row 4352, chunks being 4096
    rows after a first of 256): thousands of rows are left for the restarted server."""
    num_rows = 12000
    batch = tmp_path / "batch"
    batch.mkdir()
    x = mlp_rows(num_rows, seed=17)
    write_input(batch / "k.npz", x)
    first = MlserveProcess(jobs_repo, "--batch-dir", str(batch), log_path=tmp_path / "first.log").wait_ready()
    try:
        created = call(f"{first.url}/v2/batch/jobs", {"model": "mlp", "input": "k.npz", "output": "k.npz.out.npz"})
        assert created.status == 201, created.body
        checkpoint = batch / "k.npz.out.npz.checkpoint.json"
        deadline = time.monotonic() + 120
        while not (checkpoint.exists() and orjson.loads(checkpoint.read_bytes())["rows_done"] >= 2048):
            assert time.monotonic() < deadline, first.log()
            time.sleep(0.002)
        first.signal(sig)
        first.proc.wait(60)
    finally:
        first.stop()
    assert first.proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 0), first.log()
    killed_at = orjson.loads(checkpoint.read_bytes())
    assert killed_at["state"] == "running" and killed_at["rows_done"] < num_rows

    with serving(jobs_repo, "--batch-dir", str(batch), log_path=tmp_path / "second.log") as second:
        done = wait_job(second.url, created.body["id"], finished)
        assert "resumes" in second.log()
    assert done["rows_done"] == num_rows
    rows, y = read_output(batch / "k.npz.out.npz")
    assert rows.tolist() == list(range(num_rows))
    np.testing.assert_allclose(y, reference(jobs_repo / "mlp" / "2" / "model.onnx", x), **TOL)


def test_job_records_are_capped_and_finished_ones_pruned(jobs_repo, tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    write_input(folder / "big.npz", mlp_rows(20000, seed=15))
    write_input(folder / "small.npz", mlp_rows(8, seed=16))
    env = {"MLSERVE_JOBS_MAX_JOBS": "2", "MLSERVE_JOBS_RETENTION_S": "5"}
    records = folder / ".mlserve-jobs"
    with serving(jobs_repo, "--batch-dir", str(folder), log_path=tmp_path / "m.log", env=env) as proc:
        url = f"{proc.url}/v2/batch/jobs"
        first, second = (call(url, {"model": "mlp", "input": "big.npz", "output": f"big{i}.jsonl"}) for i in (1, 2))
        assert (first.status, second.status) == (201, 201), (first.body, second.body)
        small = {"model": "mlp", "input": "small.npz", "output": "s.jsonl"}
        refused = call(url, small)
        assert refused.status == 429 and "max_jobs" in refused.body["error"], refused.body
        assert not (folder / "s.jsonl.checkpoint.json").exists()
        for job in (first, second):
            assert call(f"{url}/{job.body['id']}", method="DELETE").status == 200
        third = call(url, small)
        assert third.status == 201, third.body
        assert first.body["id"] not in [j["id"] for j in call(url).body["jobs"]]  # the oldest finished went
        assert not (records / f"{first.body['id']}.json").exists()
        wait_job(proc.url, third.body["id"], finished)
        deadline = time.monotonic() + 60
        while third.body["id"] in [j["id"] for j in call(url).body["jobs"]]:
            assert time.monotonic() < deadline, "a finished job outlived its retention"
            time.sleep(0.2)
        assert list(records.glob("*.json")) == [] and len(read_jsonl(folder / "s.jsonl")) == 8
