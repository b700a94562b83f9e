"""A rollout keeps the versions it routes to loaded whatever the version policy says (here the
default, only the newest): stable and canary while it runs, the stable one after a rollback; after a
promotion nothing is held and the policy decides again. In process: loader and traffic manager."""

from __future__ import annotations

import asyncio

from mlserve.config import RegistryConfig
from mlserve.monitor.metrics import Metrics
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.local import LocalStore
from mlserve.routing.manager import TrafficManager
from mlserve.routing.rollout import Rollout
from tests.routing.models import write_scale_onnx


def _ready(loader: HotSwapLoader) -> list[int]:
    return loader.models["m"].ready_versions()


async def _rollout_of_2_over_1(root) -> tuple[HotSwapLoader, TrafficManager]:
    for version in (1, 2):
        write_scale_onnx(root / "m" / str(version) / "model.onnx", float(version))
    (root / "m" / "model.toml").write_text("")  # the default policy: the newest version only
    loader = HotSwapLoader(LocalStore(root), RegistryConfig(models=str(root)), Metrics())
    traffic = TrafficManager(loader, Metrics())
    await loader.reconcile()
    await loader.control.pin("m", 1, "test")  # as ModelControl.deploy does while the canary loads
    traffic.start_rollout("m", {"version": "2", "steps": [50, 100], "interval_s": 60})
    await loader.control.unpin("m", "test")
    return loader, traffic


def _ended(traffic: TrafficManager, status: str) -> None:
    state = traffic.running_rollout("m")
    assert state is not None
    traffic.put_rollout("m", Rollout.from_state({**state.to_state(), "status": status}))


def test_a_running_rollout_and_then_its_rollback_keep_the_stable_version_loaded(tmp_path):
    async def main():
        loader, traffic = await _rollout_of_2_over_1(tmp_path)
        try:
            running = _ready(loader)
            _ended(traffic, "ROLLED_BACK")
            await loader.reconcile()
            return running, _ready(loader), traffic.traffic_view("m")["split"]
        finally:
            await traffic.close()
            await loader.close()

    running, after, split = asyncio.run(main())
    assert running == [1, 2]  # unpinned, yet version 1 stays: the split still sends it half
    assert after == [1, 2] and split == {"1": 100.0, "2": 0.0}  # version 2 by the policy, version 1 for the rollback


def test_after_a_promotion_the_version_policy_decides_again(tmp_path):
    """Promoted, the rollout holds nothing: version 1 goes at the next reload, and so does version 2
    once a version 3 arrives (its finished split must not keep the promoted version in memory)."""
    async def main():
        loader, traffic = await _rollout_of_2_over_1(tmp_path)
        try:
            _ended(traffic, "PROMOTED")
            await loader.reconcile()
            promoted = _ready(loader)
            write_scale_onnx(tmp_path / "m" / "3" / "model.onnx", 3.0)
            await loader.reconcile()
            return promoted, _ready(loader)
        finally:
            await traffic.close()
            await loader.close()

    assert asyncio.run(main()) == ([2], [3])
