"""Canary rollouts between two in-process replicas (each its own loader, traffic manager and control
door) sharing one real redis-server: the rollout's split is in force on both, exactly one drives it,
another takes over from the stored step when the driver is gone, a breach visible only in the sum
of both replicas' counts rolls it back, and a store that is away holds the step."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
import uuid

import pytest
import redis

from mlserve.config import RegistryConfig
from mlserve.dataplane.control import ModelControl
from mlserve.dataplane.rollout_driver import LEASE_S, lease_key
from mlserve.errors import InvalidInput
from mlserve.monitor.metrics import Metrics
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.local import LocalStore
from mlserve.routing.manager import TrafficManager
from mlserve.state.redis_store import RedisStore
from tests.routing.models import write_scale_onnx
from tests.state.redis_server import NO_REDIS, RedisServer, has_redis

TOML = 'version_policy = { all = true }\n\n[traffic]\nsplit = { "1" = 90, "2" = 10 }\n'
_ids = itertools.count()


class Replica:
    def __init__(self, root, url: str, prefix: str, name: str) -> None:
        self.metrics = Metrics()
        self.store = RedisStore(url, prefix)
        self.loader = HotSwapLoader(LocalStore(root), RegistryConfig(models=str(root)), self.metrics)
        self.traffic = TrafficManager(self.loader, self.metrics, store=self.store)
        self.control = ModelControl(self.store, self.loader, self.traffic, replica=name)
        self.is_closed = False

    async def start(self) -> Replica:
        await self.store.start()
        await self.loader.reconcile()
        await self.control.start()
        return self

    async def close(self) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        await self.control.close()
        await self.traffic.close()
        await self.loader.close()
        await self.store.close()

    def rollout(self) -> dict | None:
        return self.traffic.rollout_view("m")["rollout"]

    def split(self) -> dict:
        return self.traffic.traffic_view("m")["split"]

    def serve(self, version: int, latency_s: float = 0.01, ok: bool = True) -> None:
        """A routed request answered here by `version` (what the inference path records)."""
        answered = self.loader.models["m"].versions[version]
        self.traffic.record("m", answered, f"r{next(_ids)}", latency_s, ok, routed=True)


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "not true in time"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def steady(*replicas: Replica, canary_latency_s: float = 0.01):
    """Each replica answers a canary and a stable request every 10 ms (clean ones) while inside."""

    async def run() -> None:
        while True:
            for replica in [r for r in replicas if not r.is_closed]:
                replica.serve(2, canary_latency_s)
                replica.serve(1)
            await asyncio.sleep(0.01)

    task = asyncio.get_running_loop().create_task(run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _repo(root):
    for version in (1, 2):
        write_scale_onnx(root / "m" / str(version) / "model.onnx", float(version))
    (root / "m" / "model.toml").write_text(TOML)
    return root


def _pair(tmp_path, url: str):
    root, prefix = _repo(tmp_path), f"ro-{uuid.uuid4().hex[:8]}"
    return Replica(root, url, prefix, "replica-a"), Replica(root, url, prefix, "replica-b"), prefix


def test_the_split_is_in_force_on_both_one_drives_and_the_other_carries_on_from_the_stored_step(tmp_path, redis_server):
    a, b, prefix = _pair(tmp_path, redis_server.url)
    plan = {"version": "2", "steps": [20, 60, 100], "interval_s": 1.0, "min_requests": 5, "max_p99_ratio": 50}

    async def scenario():
        await a.start(), await b.start()
        try:
            view = await b.control.start_rollout("m", plan)
            assert view["rollout"]["status"] == "running" and view["rollout"]["percent"] == 20
            with pytest.raises(InvalidInput, match="already rolling out"):
                await a.control.start_rollout("m", plan)
            await until(lambda: a.split() == b.split() == {"1": 80.0, "2": 20.0})
            await until(lambda: a.rollout()["driver"] is not None and a.rollout()["driver"] == b.rollout()["driver"])
            driver, other = (a, b) if a.rollout()["driver"] == "replica-a" else (b, a)
            async with steady(a, b):
                await until(lambda: other.rollout()["step"] == 1)
                at = other.rollout()["step_started_at"]
                await driver.close()  # gives its lease back: the other replica takes over at once
                await until(lambda: other.rollout()["driver"] == other.control.replica, timeout=LEASE_S)
                assert other.rollout()["step"] == 1 and other.rollout()["step_started_at"] == at
                await until(lambda: other.rollout()["status"] == "promoted", timeout=15)
            assert other.split() == {"2": 100.0} and other.traffic.traffic_view("m")["stable"] == "2"
        finally:
            await a.close(), await b.close()

    asyncio.run(scenario())


def test_a_driver_that_died_holding_its_lease_is_replaced_once_the_lease_runs_out(tmp_path, redis_server):
    a, b, prefix = _pair(tmp_path, redis_server.url)
    client = redis.Redis.from_url(redis_server.url)

    async def scenario():
        await a.start()
        try:
            view = await a.control.start_rollout("m", {"version": "2", "steps": [50, 100], "interval_s": 60})
            rollout_id = view["rollout"]["id"]
            # Replica A stops driving; the lease it held is put back as a killed A would have left
            # it in Redis (no hand-over), with 1.5 s left to run.
            await until(lambda: a.rollout()["driver"] == "replica-a")
            await a.close()
            client.set(f"{prefix}:{lease_key('m', rollout_id)}", "replica-a", px=1500)
            started = time.monotonic()
            await b.start()
            assert b.rollout()["driver"] == "replica-a" and b.rollout()["step"] == 0 and b.split() == {"1": 50.0, "2": 50.0}
            await until(lambda: b.rollout()["driver"] == "replica-b", timeout=5)
            assert time.monotonic() - started >= 1.0  # not before the dead driver's lease ran out
            assert b.rollout()["step"] == 0 and b.rollout()["step_started_at"] == view["rollout"]["step_started_at"]
        finally:
            await b.close()

    asyncio.run(scenario())


def test_a_breach_seen_only_in_the_sum_of_both_replicas_counts_rolls_back_everywhere(tmp_path, redis_server):
    a, b, _ = _pair(tmp_path, redis_server.url)
    plan = {"version": "2", "steps": [50, 100], "interval_s": 3600, "max_error_rate_increase": 0.1,
            "max_p99_ratio": 50, "min_requests": 20}

    async def scenario():
        await a.start(), await b.start()
        try:
            await a.control.start_rollout("m", plan)
            await until(lambda: b.rollout() is not None and b.rollout()["driver"] is not None)
            for replica in (a, b):  # each: 15 canary requests (under min_requests alone), 3 failed
                for i in range(15):
                    replica.serve(2, ok=i % 5 != 0)
                for _ in range(30):
                    replica.serve(1)
            await until(lambda: a.rollout()["status"] == b.rollout()["status"] == "rolled_back")
            for replica in (a, b):
                assert "error rate 0.2000" in replica.rollout()["reason"], replica.rollout()
                assert replica.split() == {"1": 100.0, "2": 0.0}
            rollbacks = [r.metrics.rollout_rollbacks.labels("m", "2")._value.get() for r in (a, b)]
            assert sorted(rollbacks) == [0, 1]  # counted once, by the driver
        finally:
            await a.close(), await b.close()

    asyncio.run(scenario())


def test_a_p99_breach_is_judged_on_the_merged_latency_histograms(tmp_path, redis_server):
    a, b, _ = _pair(tmp_path, redis_server.url)
    plan = {"version": "2", "steps": [50, 100], "interval_s": 3600, "max_error_rate_increase": 1,
            "max_p99_ratio": 1.5, "min_requests": 20}

    async def scenario():
        await a.start(), await b.start()
        try:
            await a.control.start_rollout("m", plan)
            await until(lambda: b.rollout() is not None and b.rollout()["driver"] is not None)
            # Each replica alone: 10 canary requests, too few to judge. Together: 20, and 4 of them
            # (20%, past the 99th percentile) take 50 ms against the stable version's 10 ms.
            for replica in (a, b):
                for i in range(10):
                    replica.serve(2, 0.05 if i < 2 else 0.01)
                for _ in range(100):
                    replica.serve(1, 0.01)
            await until(lambda: a.rollout()["status"] == b.rollout()["status"] == "rolled_back")
            assert "p99" in a.rollout()["reason"] and a.rollout()["reason"] == b.rollout()["reason"]
        finally:
            await a.close(), await b.close()

    asyncio.run(scenario())


@pytest.mark.skipif(not has_redis(), reason=NO_REDIS)
def test_a_store_that_is_away_holds_the_step_and_the_rollout_resumes_when_it_is_back(tmp_path):
    server = RedisServer(tmp_path / "redis-data")
    (tmp_path / "redis-data").mkdir()
    server.start()
    a, b, _ = _pair(tmp_path / "repo", server.url)
    plan = {"version": "2", "steps": [50, 100], "interval_s": 0.5, "min_requests": 5, "max_p99_ratio": 50}

    async def scenario():
        await a.start(), await b.start()
        try:
            await a.control.start_rollout("m", plan)
            await until(lambda: b.rollout() is not None and b.rollout()["driver"] is not None)
            server.proc.send_signal(signal.SIGSTOP)  # partitioned: every call times out
            try:
                async with steady(a, b):
                    await until(lambda: not a.store.is_up and not b.store.is_up)
                    deadline = time.monotonic() + 3 * plan["interval_s"] + 1
                    while time.monotonic() < deadline:  # well past the dwell time, with traffic: held
                        for replica in (a, b):
                            assert replica.rollout()["step"] == 0 and replica.rollout()["status"] == "running"
                        await asyncio.sleep(0.05)
                    server.proc.send_signal(signal.SIGCONT)
                    await until(lambda: a.rollout()["status"] == b.rollout()["status"] == "promoted", timeout=15)
            finally:
                server.proc.send_signal(signal.SIGCONT)
            assert a.split() == b.split() == {"2": 100.0}
        finally:
            await a.close(), await b.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
