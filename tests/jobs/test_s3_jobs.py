"""Batch jobs with s3:// input and output against a real S3 server (moto): a job through a real
mlserve process, the refusals, and a takeover between two in-process replicas (sharing Redis, not a
folder) that rebuilds the dead replica's working files from the S3 mirror: every output row once."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import orjson

from mlserve.config import JobsConfig
from mlserve.jobs.manager import JobManager
from mlserve.jobs.s3files import S3Files
from mlserve.state.redis_store import RedisStore
from tests.jobs.helpers import mlp_rows, reference, write_jsonl
from tests.jobs.test_jobs_e2e import wait_job
from tests.jobs.test_replicas import Engine, _rows, _view_if, until
from tests.registry.conftest import S3_ENV, moto_server, s3_env  # noqa: F401 - the S3 store tests' fixtures
from tests.registry.s3util import read_keys, upload
from tests.server.http import call
from tests.server_process import serving


def _lines(data: bytes) -> list[dict]:
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def test_a_job_reads_and_writes_s3_through_a_real_server(jobs_repo, tmp_path, moto_server, s3_env):
    x = mlp_rows(300, seed=5)
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "a.jsonl", x)
    upload(moto_server, "jobs", "in", tmp_path / "in", create=True)
    batch = tmp_path / "batch"
    batch.mkdir()
    with serving(jobs_repo, "--batch-dir", str(batch), "--s3-endpoint", moto_server, log_path=tmp_path / "m.log",
                 env=dict(S3_ENV)) as server:
        url = server.url
        bad = call(f"{url}/v2/batch/jobs", {"model": "mlp", "input": "s3://jobs/in/a.jsonl", "output": "out.jsonl"})
        assert bad.status == 400 and "'output' must be s3://bucket/key too" in bad.body["error"], bad.body
        bad = call(f"{url}/v2/batch/jobs", {"model": "mlp", "input": "s3://jobs/in/nope.jsonl",
                                            "output": "s3://jobs/out/a.jsonl"})
        assert bad.status == 400 and "does not exist" in bad.body["error"], bad.body
        created = call(f"{url}/v2/batch/jobs", {"model": "mlp", "input": "s3://jobs/in/a.jsonl",
                                                "output": "s3://jobs/out/a.jsonl"})
        assert created.status == 201, created.body
        job = wait_job(url, created.body["id"], lambda j: j["state"] == "done")
        assert job["rows_done"] == 300 and job["rows_failed"] == 0
        again = call(f"{url}/v2/batch/jobs", {"model": "mlp", "input": "s3://jobs/in/a.jsonl",
                                              "output": "s3://jobs/out/a.jsonl"})
        assert again.status == 400 and "exists; start over with overwrite" in again.body["error"], again.body
    objects = asyncio.run(read_keys(moto_server, "out/", bucket="jobs"))
    assert sorted(objects) == ["out/a.jsonl", "out/a.jsonl.errors.jsonl"]  # the mirror is gone
    out = _lines(objects["out/a.jsonl"])
    assert [r["row"] for r in out] == list(range(300))
    np.testing.assert_allclose(np.array([r["y"] for r in out], np.float32),
                               reference(jobs_repo / "mlp" / "2" / "model.onnx", x), rtol=1e-4, atol=1e-5)


def test_a_dead_replicas_s3_job_is_taken_over_from_the_mirror_every_row_once(tmp_path, redis_server, moto_server,
                                                                              s3_env):
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "a.jsonl", _rows(200))
    upload(moto_server, "jobs", "in", tmp_path / "in", create=True)
    prefix = f"s3j-{uuid.uuid4().hex[:8]}"

    class Replica:  # each its own batch folder: only S3 is shared
        def __init__(self, name: str, engine: Engine) -> None:
            folder = tmp_path / name
            folder.mkdir()
            self.store = RedisStore(redis_server.url, prefix)
            self.engine = engine
            config = JobsConfig(allowed_dir=str(folder), chunk_rows=8, lease_s=2.0, scan_s=0.1)
            self.jobs = JobManager(config, engine.resolve, self.store, replica=name, s3=S3Files(moto_server))

        async def view(self, job_id):
            return self.jobs.view(await self.jobs.get(job_id))

    async def scenario():
        a, b = Replica("a", Engine(pace_s=0.03)), Replica("b", Engine())
        for r in (a, b):
            await r.store.start()
            await r.jobs.start()
        try:
            job = await a.jobs.submit({"model": "m", "input": "s3://jobs/in/a.jsonl", "output": "s3://jobs/out/a.jsonl"})
            assert a.jobs.view(job)["checkpoint"] == "s3://jobs/out/a.jsonl.mlserve-job/"
            await until(lambda: _view_if(b, job.job_id, lambda v: v["rows_done"] >= 40))
            await a.jobs.close(release=False)  # dies
            done = await until(lambda: _view_if(b, job.job_id, lambda v: v["state"] == "done"), timeout=40)
            assert done["owner"] == "b" and done["rows_done"] == 200
            assert 0 < b.engine.rows < 200  # from the mirror's checkpoint, not from the start
        finally:
            await b.jobs.close()
            for r in (a, b):
                await r.store.close()

    asyncio.run(asyncio.wait_for(scenario(), 90))
    objects = asyncio.run(read_keys(moto_server, "out/", bucket="jobs"))
    out = _lines(objects["out/a.jsonl"])
    assert [r["row"] for r in out] == list(range(200))
    np.testing.assert_array_equal(np.array([r["y"] for r in out], np.float32), _rows(200) * 2)
