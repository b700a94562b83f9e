"""Traffic state across repository reloads (what SIGHUP triggers): model.toml changes take effect,
a rollout's state survives. In-process with the real loader and ONNX models."""

from __future__ import annotations

import asyncio

from mlserve.config import RegistryConfig
from mlserve.monitor.metrics import Metrics
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.local import LocalStore
from mlserve.routing.manager import TrafficManager
from tests.routing.models import write_scale_onnx

HEAD = "version_policy = { all = true }\n\n[traffic]\n"


def _setup(root):
    for version in (1, 2):
        write_scale_onnx(root / "m" / str(version) / "model.onnx", float(version))
    (root / "m" / "model.toml").write_text(HEAD + 'split = { "1" = 90, "2" = 10 }\n')
    metrics = Metrics()
    loader = HotSwapLoader(LocalStore(root), RegistryConfig(models=str(root)), metrics)
    return loader, TrafficManager(loader, metrics)


def test_model_toml_changes_apply_on_reload_and_a_rollout_survives(tmp_path):
    async def scenario():
        loader, traffic = _setup(tmp_path)
        await loader.reconcile()
        try:
            assert traffic.traffic_view("m")["split"] == {"1": 90.0, "2": 10.0}
            (tmp_path / "m" / "model.toml").write_text(HEAD + 'split = { "1" = 50, "2" = 50 }\n')
            await loader.reconcile()
            view = traffic.traffic_view("m")
            assert view["split"] == {"1": 50.0, "2": 50.0} and view["source"] == "model.toml"

            traffic.start_rollout("m", {"version": "2", "steps": [10, 100], "interval_s": 3600})
            (tmp_path / "m" / "model.toml").write_text(HEAD + 'split = { "1" = 70, "2" = 30 }\n')
            await loader.reconcile()
            view = traffic.traffic_view("m")
            assert view["rollout"]["status"] == "running" and view["rollout"]["percent"] == 10
            assert view["split"] == {"1": 90.0, "2": 10.0} and view["source"] == "rollout"

            traffic.cancel_rollout("m")
            (tmp_path / "m" / "model.toml").write_text(HEAD + 'split = { "1" = 60, "2" = 40 }\n')
            await loader.reconcile()
            view = traffic.traffic_view("m")
            assert view["split"] == {"1": 60.0, "2": 40.0} and view["rollout"]["status"] == "cancelled"

            (tmp_path / "m" / "model.toml").write_text(HEAD + 'split = { "1" = "lots" }\n')
            await loader.reconcile()
            view = traffic.traffic_view("m")
            assert "[traffic] split" in view["error"] and view["split"] == {"1": 60.0, "2": 40.0}
        finally:
            await traffic.close()
            await loader.close()

    asyncio.run(scenario())
