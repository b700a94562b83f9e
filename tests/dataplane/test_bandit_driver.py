"""The bandit driver behind replicas: two in-process replicas (each its own loader, traffic manager,
control door and driver) sharing one real redis-server. Only the lease holder writes the split; both
apply it; a clean stop hands the lease to the other; an admin split or rollout is refused while the
bandit owns the split. And in one process (the memory store) the driver's own task moves the split,
keeps it over a reload, and hands it back when the bandit leaves model.toml."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from mlserve.config import RegistryConfig
from mlserve.dataplane.bandit import BanditDriver
from mlserve.dataplane.control import ModelControl
from mlserve.errors import Conflict
from mlserve.monitor.metrics import Metrics
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.local import LocalStore
from mlserve.routing.manager import TrafficManager
from mlserve.routing.shared import SharedExperiments
from mlserve.state import MemoryStore
from mlserve.state.redis_store import RedisStore
from tests.dataplane.test_control import until
from tests.routing.models import write_scale_onnx

TOML = ('version_policy = { all = true }\n\n[traffic]\nsplit = { "1" = 50, "2" = 50 }\n'
        'bandit = { policy = "thompson", min_share = 0.05, update_s = 0.05 }\n')


class Replica:
    def __init__(self, root, store) -> None:
        metrics = Metrics()
        self.store = store
        self.loader = HotSwapLoader(LocalStore(root), RegistryConfig(models=str(root)), metrics)
        self.traffic = TrafficManager(self.loader, metrics, store=self.store)
        self.control = ModelControl(self.store, self.loader, self.traffic)
        self.bandit = BanditDriver(self.store, self.traffic, self.control)

    async def start(self) -> Replica:
        await self.store.start()
        await self.loader.reconcile()
        await self.control.start()
        return self

    async def close(self) -> None:
        await self.bandit.close()
        await self.control.close()
        await self.traffic.close()
        await self.loader.close()
        await self.store.close()

    def view(self) -> dict:
        return self.traffic.experiment_view("m")["bandit"]


def _repo(root, toml: str = TOML):
    for version in (1, 2):
        write_scale_onnx(root / "m" / str(version) / "model.onnx", float(version))
    (root / "m" / "model.toml").write_text(toml)
    return root


async def _outcomes(store, ones: dict[int, int], num: int = 100) -> None:
    """`num` outcomes per version, `ones[v]` of them 1, credited as feedback would (any replica)."""
    shared = SharedExperiments(store)
    for version, count in ones.items():
        for i in range(num):
            await shared.credit("m", version, float(i < count))


def test_only_the_lease_holder_writes_the_split_and_every_replica_applies_it(tmp_path, redis_server):
    root, prefix = _repo(tmp_path), f"b-{uuid.uuid4().hex[:8]}"

    async def scenario():
        a = await Replica(root, RedisStore(redis_server.url, prefix)).start()
        b = await Replica(root, RedisStore(redis_server.url, prefix)).start()
        try:
            spec = a.traffic.bandits()["m"]
            await _outcomes(a.store, {1: 30, 2: 60})
            assert await a.bandit.update("m", spec) is True
            assert await b.bandit.update("m", spec) is False  # a holds the lease
            await until(lambda: b.view()["updates"] == 1)
            for replica in (a, b):
                view = replica.view()
                assert view["updated_by"] == a.bandit.owner and view["outcomes"] == {"1": 100, "2": 100}
                assert view["shares"]["2"] == pytest.approx(0.95, abs=0.005)
                assert replica.traffic.traffic_view("m")["source"] == "bandit"
            assert a.view() == b.view()
            # The bandit owns the split: an admin split or a rollout is refused, and nothing changes.
            with pytest.raises(Conflict, match="bandit owns the split"):
                await b.control.set_traffic("m", {"split": {"1": 90, "2": 10}})
            with pytest.raises(Conflict, match="bandit owns the split"):
                a.traffic.start_rollout("m", {"version": "2", "steps": [50, 100], "interval_s": 1})
            assert b.traffic.traffic_view("m")["split"] == a.traffic.traffic_view("m")["split"]
            # A clean stop hands the lease back: the other replica writes the next split.
            await a.bandit.close()
            assert await b.bandit.update("m", spec) is True
            await until(lambda: a.view()["updates"] == 2)
            assert a.view()["updated_by"] == b.bandit.owner
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_in_one_process_the_driver_moves_the_split_keeps_it_over_a_reload_and_hands_it_back(tmp_path):
    root = _repo(tmp_path)

    async def scenario():
        r = await Replica(root, MemoryStore()).start()
        await r.bandit.start()
        try:
            await _outcomes(r.store, {1: 10, 2: 90})
            await until(lambda: (r.view()["shares"] or {}).get("2", 0) > 0.9, timeout=5)
            assert r.traffic.traffic_view("m")["source"] == "bandit"
            split = r.traffic.traffic_view("m")["split"]
            # A reload with another model.toml (same bandit, another experiment setting) keeps its split.
            (root / "m" / "model.toml").write_text(TOML + 'salt = "x"\n')
            await r.loader.reconcile()
            assert r.traffic.traffic_view("m")["split"] == split
            # The bandit taken out of model.toml: its split goes, model.toml's holds again.
            (root / "m" / "model.toml").write_text(TOML.replace("bandit", "# bandit"))
            await r.loader.reconcile()
            view = r.traffic.traffic_view("m")
            assert view["split"] == {"1": 50.0, "2": 50.0} and view["source"] == "model.toml"
            assert r.traffic.experiment_view("m")["bandit"] is None and r.traffic.bandits() == {}
        finally:
            await r.close()

    asyncio.run(scenario())


def test_without_a_split_the_arms_are_the_ready_versions(tmp_path):
    root = _repo(tmp_path, 'version_policy = { all = true }\n\n[traffic]\nbandit = { update_s = 0.05 }\n')

    async def scenario():
        r = await Replica(root, MemoryStore()).start()
        try:
            assert r.traffic.traffic_view("m")["split"] == {}  # until the first update
            assert await r.bandit.update("m", r.traffic.bandits()["m"]) is True
            view = r.traffic.traffic_view("m")
            assert set(view["split"]) == {"1", "2"} and view["source"] == "bandit"
            assert sum(view["split"].values()) == pytest.approx(100.0)
        finally:
            await r.close()

    asyncio.run(scenario())
