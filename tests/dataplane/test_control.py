"""ModelControl between two in-process replicas (each its own loader and traffic manager) sharing one
real redis-server: a change made through either applies on both, concurrent writers both land, a
replica that starts takes the current state, and bad data in Redis is refused by name in the log."""

from __future__ import annotations

import asyncio
import logging
import uuid

import redis

from mlserve.config import RegistryConfig
from mlserve.dataplane.control import ModelControl
from mlserve.monitor.metrics import Metrics
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.local import LocalStore
from mlserve.routing.manager import TrafficManager
from mlserve.state.redis_store import RedisStore
from tests.routing.models import write_scale_onnx

TOML = 'version_policy = { all = true }\n\n[traffic]\nsplit = { "1" = 90, "2" = 10 }\n'


class Replica:
    def __init__(self, root, url: str, prefix: str) -> None:
        metrics = Metrics()
        self.store = RedisStore(url, prefix)
        self.loader = HotSwapLoader(LocalStore(root), RegistryConfig(models=str(root)), metrics)
        self.traffic = TrafficManager(self.loader, metrics, store=self.store)
        self.control = ModelControl(self.store, self.loader, self.traffic)

    async def start(self) -> Replica:
        await self.store.start()
        await self.loader.reconcile()
        await self.control.start()
        return self

    async def close(self) -> None:
        await self.control.close()
        await self.traffic.close()
        await self.loader.close()
        await self.store.close()

    def split(self) -> dict:
        return self.traffic.traffic_view("m")["split"]


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "not true in time"
        await asyncio.sleep(0.01)


def _repo(root):
    for version in (1, 2, 3):
        write_scale_onnx(root / "m" / str(version) / "model.onnx", float(version))
    (root / "m" / "model.toml").write_text(TOML)
    return root


def test_changes_through_either_replica_apply_on_both_and_a_new_replica_takes_them(tmp_path, redis_server):
    root, prefix = _repo(tmp_path), f"c-{uuid.uuid4().hex[:8]}"

    async def scenario():
        a = await Replica(root, redis_server.url, prefix).start()
        b = await Replica(root, redis_server.url, prefix).start()
        try:
            await a.control.set_traffic("m", {"split": {"1": 20, "2": 80}})
            await until(lambda: b.split() == {"1": 20.0, "2": 80.0})
            # Two admins at once on different keys: both land (compare-and-set retries), on both replicas.
            await asyncio.gather(b.control.set_traffic("m", {"fallback": "previous", "stable": "2"}),
                                 a.control.set_traffic("m", {"shadow": {"version": "3", "percent": 10}}))
            for replica in (a, b):
                await until(lambda r=replica: r.traffic.traffic_view("m")["shadow"] is not None
                            and r.traffic.traffic_view("m")["stable"] == "2")
            await b.control.pin("m", 1, "test")
            await until(lambda: a.loader.models["m"].pinned == 1)
            await a.control.unpin("m", "test")
            await until(lambda: b.loader.models["m"].pinned is None)
            c = await Replica(root, redis_server.url, prefix).start()  # joins late: takes the current state
            try:
                view = c.traffic.traffic_view("m")
                assert view["split"] == {"1": 20.0, "2": 80.0} and view["stable"] == "2"
                assert view["shadow"]["version"] == "3" and view["source"] == "api"
            finally:
                await c.close()
            await a.control.set_traffic("m", {"split": None, "shadow": None})  # null: model.toml's again
            await until(lambda: b.split() == {"1": 90.0, "2": 10.0})
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_bad_data_in_redis_is_refused_by_name_and_changes_nothing(tmp_path, redis_server, caplog):
    root, prefix = _repo(tmp_path), f"bad-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_server.url)

    async def scenario():
        a = await Replica(root, redis_server.url, prefix).start()
        try:
            before = a.split()
            for raw in (b'{"schema": 99, "version": 7, "data": {}}', b"not json"):
                client.set(f"{prefix}:control:m", raw)
                await a.control.sync("m")
            client.delete(f"{prefix}:control:m")
            client.hset(f"{prefix}:control:m", "x", "1")  # the wrong kind of key
            await a.control.sync("m")
            client.delete(f"{prefix}:control:m")
            client.set(f"{prefix}:control:m", b'{"schema": 1, "version": 9, "data": {"traffic": {"split": "lots"}}}')
            await a.control.sync("m")
            assert a.split() == before
            # A good write replaces the bad document.
            client.delete(f"{prefix}:control:m")
            await a.control.set_traffic("m", {"split": {"1": 30, "2": 70}})
            assert a.split() == {"1": 30.0, "2": 70.0}
        finally:
            await a.close()

    with caplog.at_level(logging.ERROR, logger="mlserve.control"):
        asyncio.run(scenario())
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "schema 99" in messages and "does not hold JSON" in messages and "WRONGTYPE" in messages
    assert "control document version 9 refused" in messages and "split" in messages
