"""The traffic manager in-process, with the real loader: fallback order and the last resort."""

from __future__ import annotations

import asyncio

from mlserve.config import RegistryConfig
from mlserve.monitor.metrics import Metrics
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.local import LocalStore
from mlserve.routing.manager import TrafficManager
from tests.routing.models import write_scale_onnx


def _repo(root, versions, traffic: str):
    for version in versions:
        write_scale_onnx(root / "m" / str(version) / "model.onnx", float(version))
    (root / "m" / "model.toml").write_text("version_policy = { all = true }\n\n[traffic]\n" + traffic)
    metrics = Metrics()
    loader = HotSwapLoader(LocalStore(root), RegistryConfig(models=str(root)), metrics)
    return loader, TrafficManager(loader, metrics)


def _scenario(root, versions, traffic, body):
    async def run():
        loader, traffic_manager = _repo(root, versions, traffic)
        await loader.reconcile()
        try:
            body(loader.models["m"], traffic_manager)
        finally:
            await traffic_manager.close()
            await loader.close()
    asyncio.run(run())


def _fail(manager, served, version, times):
    for _ in range(times):
        manager.record("m", served.versions[version], "r", 0.001, False, routed=True)


def test_fallback_prefers_the_stable_version_then_older_ones(tmp_path):
    def body(served, manager):
        default = served.versions[3]
        assert manager.route(served, default, "k").version == 3  # split: all on 3, stable 3
        manager.set_split("m", {"split": {"2": 0, "3": 100}})
        _fail(manager, served, 3, 2)
        assert manager.route(served, default, "k").version == 2  # breaker on 3 open: next older
        _fail(manager, served, 2, 2)
        assert manager.route(served, default, "k").version == 1
    _scenario(tmp_path, (1, 2, 3), 'split = { "3" = 100 }\nbreaker = { consecutive_failures = 2, open_s = 60 }\n', body)


def test_a_lone_version_keeps_serving_with_its_breaker_open(tmp_path):
    def body(served, manager):
        default = served.versions[1]
        _fail(manager, served, 1, 5)
        assert manager.traffic_view("m")["breakers"]["1"]["state"] == "open"
        assert manager.route(served, default, None).version == 1
    _scenario(tmp_path, (1,), "breaker = { consecutive_failures = 2, open_s = 60 }\n", body)
