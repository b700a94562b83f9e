"""Batch jobs between two in-process replicas (each its own JobManager and RedisStore) sharing one real
redis-server and one batch folder: a job is seen and cancelled through either, exactly one runs it, and
when its replica dies (closed without releasing its lease) the other takes it over from its checkpoint,
every output row once. Also: a job whose files the other replica cannot see fails saying so, a bad
record in Redis is refused by name, and a running job outlives a Redis that is away."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis

from mlserve.config import JobsConfig
from mlserve.errors import JobNotFound
from mlserve.jobs.book import record_key
from mlserve.jobs.manager import JobManager, JobRecordRefused, Target
from mlserve.spec import ModelInfo, TensorSpec
from mlserve.state import StateUnavailable
from mlserve.state.redis_store import RedisStore
from tests.jobs.helpers import read_jsonl, write_jsonl
from tests.state.redis_server import NO_REDIS, RedisServer, has_redis

INFO = ModelInfo("test", (TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1, 4)),), 4)


class Engine:
    """y = 2x, one batch at a time; `pace_s` per batch keeps a job running long enough to act on it.
    Counts every row it computed (rows recomputed after a takeover show up here, never in the output)."""

    def __init__(self, pace_s: float = 0.0) -> None:
        self.pace_s = pace_s
        self.rows = 0

    async def resolve(self, model: str, version: int | None, priority: int | None) -> Target:
        return Target(1, INFO, self.infer)

    async def infer(self, inputs, num_rows):
        await asyncio.sleep(self.pace_s)
        self.rows += num_rows
        return {"y": inputs["x"] * 2}


class Replica:
    def __init__(self, name: str, folder: Path, url: str, prefix: str, engine: Engine, **jobs) -> None:
        config = JobsConfig(allowed_dir=str(folder), chunk_rows=8, lease_s=2.0, scan_s=0.1, **jobs)
        self.store = RedisStore(url, prefix)
        self.engine = engine
        self.jobs = JobManager(config, engine.resolve, self.store, replica=name)

    async def start(self) -> Replica:
        await self.store.start()
        await self.jobs.start()
        return self

    async def close(self, release: bool = True) -> None:
        await self.jobs.close(release=release)
        await self.store.close()

    async def view(self, job_id: str) -> dict:
        return self.jobs.view(await self.jobs.get(job_id))


async def until(check, timeout: float = 20.0):
    """Poll an async check until it returns something truthy; returns it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert asyncio.get_running_loop().time() < deadline, "not true in time"
        await asyncio.sleep(0.02)


def _rows(num: int) -> np.ndarray:
    return np.arange(num * 4, dtype=np.float32).reshape(num, 4)


@pytest.fixture()
def folder(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", _rows(200))
    return tmp_path


@pytest.fixture()
def prefix():
    return f"j-{uuid.uuid4().hex[:8]}"


def run(scenario):
    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_job_is_seen_and_cancelled_through_the_other_replica(folder, redis_server, prefix):
    async def scenario():
        a = await Replica("a", folder, redis_server.url, prefix, Engine(pace_s=0.05)).start()
        b = await Replica("b", folder, redis_server.url, prefix, Engine()).start()
        try:
            job = await a.jobs.submit({"model": "m", "input": "in.jsonl", "output": "out.jsonl"})
            seen = await until(lambda: _view_if(b, job.job_id, lambda v: v["rows_done"] > 0))
            assert seen["owner"] == "a" and seen["state"] == "running" and seen["rows_total"] == 200
            assert [j.job_id for j in await b.jobs.list()] == [job.job_id]
            with pytest.raises(JobNotFound):
                await b.jobs.get("0123456789abcdef")
            cancelled = b.jobs.view(await b.jobs.cancel(job.job_id))
            assert cancelled["state"] == "cancelled", cancelled  # the owner stopped within the wait
            assert (await a.view(job.job_id))["state"] == "cancelled"
            done = cancelled["rows_done"]
            await asyncio.sleep(0.3)
            assert (await a.view(job.job_id))["rows_done"] == done < 200  # it stopped, and stays stopped
            assert b.engine.rows == 0  # exactly one replica ran it
        finally:
            await a.close()
            await b.close()

    run(scenario)


async def _view_if(replica: Replica, job_id: str, want) -> dict | None:
    view = await replica.view(job_id)
    return view if want(view) else None


def test_a_dead_replicas_job_is_taken_over_from_its_checkpoint_every_row_once(folder, redis_server, prefix):
    async def scenario():
        a = await Replica("a", folder, redis_server.url, prefix, Engine(pace_s=0.03)).start()
        b = await Replica("b", folder, redis_server.url, prefix, Engine()).start()
        try:
            job = await a.jobs.submit({"model": "m", "input": "in.jsonl", "output": "out.jsonl"})
            await until(lambda: _view_if(b, job.job_id, lambda v: v["rows_done"] >= 40))
            assert b.engine.rows == 0
            await a.close(release=False)  # dies: its lease is left to run out
            done = await until(lambda: _view_if(b, job.job_id, lambda v: v["state"] == "done"))
            assert done["owner"] == "b" and done["rows_done"] == 200 and done["rows_failed"] == 0
            assert 0 < b.engine.rows < 200  # b went on from a's checkpoint, not from the start
        finally:
            await b.close()
        out = read_jsonl(folder / "out.jsonl")
        assert [r["row"] for r in out] == list(range(200))  # no row lost, none twice
        np.testing.assert_array_equal(np.array([r["y"] for r in out], np.float32), _rows(200) * 2)

    run(scenario)


def test_a_job_whose_files_the_other_replica_cannot_see_fails_saying_so(tmp_path, redis_server, prefix):
    own_a, own_b = tmp_path / "a", tmp_path / "b"
    own_a.mkdir(), own_b.mkdir()
    write_jsonl(own_a / "in.jsonl", _rows(200))

    async def scenario():
        a = await Replica("a", own_a, redis_server.url, prefix, Engine(pace_s=0.05)).start()
        b = await Replica("b", own_b, redis_server.url, prefix, Engine()).start()
        try:
            job = await a.jobs.submit({"model": "m", "input": "in.jsonl", "output": "out.jsonl"})
            await until(lambda: _view_if(b, job.job_id, lambda v: v["rows_done"] > 0))
            await a.close(release=False)
            failed = await until(lambda: _view_if(b, job.job_id, lambda v: v["state"] == "failed"))
            assert "replica a stopped" in failed["reason"] and "local disk" in failed["reason"], failed
            assert b.engine.rows == 0
        finally:
            await b.close()

    run(scenario)


async def _finished_in_index(raw: redis.Redis, prefix: str, job_id: str) -> bool:
    stored = raw.get(f"{prefix}:jobs:index")
    entry = orjson.loads(stored)["data"]["jobs"].get(job_id) if stored else None
    return entry is not None and entry[1] is not None


def test_a_bad_job_record_in_redis_is_refused_by_name(folder, redis_server, prefix):
    async def scenario():
        a = await Replica("a", folder, redis_server.url, prefix, Engine()).start()
        try:
            job = await a.jobs.submit({"model": "m", "input": "in.jsonl", "output": "out.jsonl"})
            raw = redis.Redis.from_url(redis_server.url)
            # the record's last write is done once the index marks the job finished (that comes after it)
            await until(lambda: _finished_in_index(raw, prefix, job.job_id))
            key = f"{prefix}:{record_key(job.job_id)}"
            doc = orjson.loads(raw.get(key))
            doc["data"]["progress"]["rows_done"] = "many"
            raw.set(key, orjson.dumps(doc))
            a.jobs.jobs.clear()  # read it from the store, as another replica would
            with pytest.raises(JobRecordRefused, match=rf"jobs:record:{job.job_id}.*'rows_done'"):
                await a.jobs.get(job.job_id)
            assert await a.jobs.list() == []  # left out of the list, logged by name
            raw.set(key, b"not json")
            with pytest.raises(JobRecordRefused, match="does not hold JSON"):
                await a.jobs.get(job.job_id)
            raw.set(f"{prefix}:jobs:index", orjson.dumps({"schema": 1, "version": 3, "data": {"jobs": [1, 2]}}))
            with pytest.raises(JobRecordRefused, match="'jobs:index' has no 'jobs' object"):
                await a.jobs.list()
            with pytest.raises(JobRecordRefused, match="'jobs:index'"):
                await a.jobs.submit({"model": "m", "input": "in.jsonl", "output": "out2.jsonl"})
        finally:
            await a.close()

    run(scenario)


def test_a_running_job_outlives_a_redis_that_is_away_and_is_recorded_when_it_returns(folder, tmp_path, prefix):
    if not has_redis():
        pytest.skip(NO_REDIS)
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis").start()

    async def scenario():
        a = await Replica("a", folder, server.url, prefix, Engine(pace_s=0.02)).start()
        b = await Replica("b", folder, server.url, prefix, Engine()).start()
        try:
            job = await a.jobs.submit({"model": "m", "input": "in.jsonl", "output": "out.jsonl"})
            await until(lambda: _view_if(a, job.job_id, lambda v: v["rows_done"] > 0))
            await asyncio.to_thread(server.stop)
            with pytest.raises(StateUnavailable, match="state store"):
                await b.jobs.get(job.job_id)  # 503 naming the state store
            await until(lambda: _view_if(a, job.job_id, lambda v: v["state"] == "done"))  # ran on
            await asyncio.to_thread(server.start)
            seen = await until(lambda: _view_or_none(b, job.job_id, lambda v: v["state"] == "done"))
            assert seen["rows_done"] == 200 and seen["owner"] == "a"
            assert b.engine.rows == 0
        finally:
            await a.close()
            await b.close()

    try:
        run(scenario)
    finally:
        server.stop()
    assert [r["row"] for r in read_jsonl(folder / "out.jsonl")] == list(range(200))


async def _view_or_none(replica: Replica, job_id: str, want) -> dict | None:
    try:
        return await _view_if(replica, job_id, want)
    except (StateUnavailable, JobNotFound):  # away, or back empty until the owner writes its record again
        return None
