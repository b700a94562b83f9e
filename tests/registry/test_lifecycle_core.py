"""The loader's pure cores called directly: serialized reconcile passes, warm-up sizes, the LRU
budget, checksums, pin/rollback state. Real ONNX models in a real local folder."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import numpy as np
import pytest

from mlserve.config import RegistryConfig
from mlserve.monitor.metrics import Metrics
from mlserve.registry.budget import Budget
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.local import LocalStore
from mlserve.registry.repository import ModelEntry
from mlserve.registry.served import ServedModel, ServedVersion, VersionState
from mlserve.registry.store import StoreError
from mlserve.registry.warmup import batch_sizes, warm_up
from mlserve.spec import BatchingSpec, ModelConfig, ModelInfo, TensorSpec, parse_model_config
from tests.registry.helpers import write_model, write_version


class SlowStore(LocalStore):
    """The local store, with each snapshot taking a while and counted."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.num_refreshes = 0
        self.num_running = 0
        self.most_running = 0

    async def refresh(self, model: str | None = None) -> None:
        self.num_refreshes += 1
        self.num_running += 1
        self.most_running = max(self.most_running, self.num_running)
        await asyncio.sleep(0.05)
        self.num_running -= 1


def test_triggers_during_a_pass_fold_into_one_more_pass(tmp_path):
    write_model(tmp_path, "m", [1])
    store = SlowStore(tmp_path)

    async def run():
        loader = HotSwapLoader(store, RegistryConfig(models=str(tmp_path)), Metrics())
        try:
            first = asyncio.create_task(loader.reconcile("signal"))
            await asyncio.sleep(0.01)  # the first pass is running
            await asyncio.gather(first, *(loader.reconcile("signal") for _ in range(5)))
            return loader.models["m"].ready_versions()
        finally:
            await loader.close()

    assert asyncio.run(run()) == [1]
    assert store.num_refreshes == 2 and store.most_running == 1


def test_unchanged_files_are_not_reloaded_and_changed_ones_are(tmp_path):
    write_model(tmp_path, "m", [1])

    async def run():
        loader = HotSwapLoader(LocalStore(tmp_path), RegistryConfig(models=str(tmp_path)), Metrics())
        try:
            await loader.reconcile("api")
            first = loader.models["m"].versions[1]
            await loader.reconcile("api")
            same = loader.models["m"].versions[1]
            write_version(tmp_path, "m", 1)  # rewritten in place: a new artifact
            await loader.reconcile("api")
            rewritten = loader.models["m"].versions[1]
            return first, same, rewritten, first.state, rewritten.state
        finally:
            await loader.close()

    first, same, rewritten, first_state, rewritten_state = asyncio.run(run())
    assert same is first and rewritten is not first
    assert first_state is VersionState.UNLOADING and rewritten_state is VersionState.READY


def test_rollback_goes_back_and_survives_reconcile(tmp_path):
    write_model(tmp_path, "m", [1])

    async def run():
        loader = HotSwapLoader(LocalStore(tmp_path), RegistryConfig(models=str(tmp_path)), Metrics())
        try:
            await loader.reconcile("api")
            write_version(tmp_path, "m", 2)
            await loader.reconcile("api")
            served = loader.models["m"]
            assert served.ready_versions() == [2] and served.history == [1, 2]
            await loader.control.rollback("m", "api")
            assert served.default_version() == 1 and served.pinned == 1
            await loader.reconcile("api")
            assert served.default_version() == 1
            await loader.control.unpin("m", "api")
            return served.ready_versions(), served.history
        finally:
            await loader.close()

    assert asyncio.run(run()) == ([2], [1, 2, 1, 2])


def test_warmup_covers_every_batch_size():
    info = ModelInfo("x", (TensorSpec("x", "FP32", (-1, 4)),), (), max_batch_size=32)
    config = ModelConfig(batching=BatchingSpec(max_batch_size=32, preferred_batch_sizes=(8, 16)))
    assert batch_sizes(info, config) == [1, 8, 16, 32]
    explicit = parse_model_config({"warmup": {"batch_sizes": [4, 2]}})
    assert batch_sizes(info, explicit) == [2, 4]
    unbatched = ModelInfo("x", (TensorSpec("x", "FP32", (3, 4)),), (), max_batch_size=0)
    assert batch_sizes(unbatched, ModelConfig()) == [1]


class RecordingBackend:
    """Satisfies the Backend protocol; records the batch shapes it is given."""

    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        self.shapes: list[tuple[int, ...]] = []

    def infer(self, inputs):
        self.shapes.append(inputs["x"].shape)
        return {"y": inputs["x"]}


def test_warmup_uses_the_sample_file(tmp_path):
    sample = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.savez(tmp_path / "warmup.npz", x=sample)
    info = ModelInfo("x", (TensorSpec("x", "FP32", (-1, 4)),), (), max_batch_size=4)
    config = parse_model_config({"max_batch_size": 4, "warmup": {"file": "warmup.npz"}})
    backend = RecordingBackend(info)
    assert warm_up(backend, config, tmp_path) == 2
    assert backend.shapes == [(1, 4), (4, 4)]


def _resident(name: str, last_used: float, busy: bool = False) -> ServedModel:
    served = ServedModel(ModelEntry(name, ModelConfig(), (1,)), last_used=last_used)
    served.versions[1] = ServedVersion(name, 1, VersionState.READY, num_bytes=100)
    served.num_waiting = 1 if busy else 0
    return served


def test_budget_evicts_the_least_recently_used_idle_model():
    models = [_resident("a", 3.0), _resident("b", 1.0, busy=True), _resident("c", 2.0)]
    incoming = ServedModel(ModelEntry("d", ModelConfig(), (1,)))
    assert not Budget(max_models=3).has_room(models, incoming)
    assert Budget(max_models=4).has_room(models, incoming)
    assert Budget(max_bytes=350).has_room(models, incoming, incoming_bytes=50)
    assert not Budget(max_bytes=350).has_room(models, incoming, incoming_bytes=51)
    assert Budget(max_models=3).victim(models, incoming).name == "c"
    assert not Budget(max_models=4).has_room(models, incoming, reserved={"e": 0})


def test_local_store_checks_sha256sums(tmp_path):
    write_model(tmp_path, "m", [1])
    folder = tmp_path / "m" / "1"
    digest = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    (folder / "SHA256SUMS").write_text(f"{digest}  model.onnx\n")
    store = LocalStore(tmp_path)
    assert asyncio.run(store.fetch("m", 1)) == folder.resolve()
    (folder / "SHA256SUMS").write_text(f"{'1' * 64}  model.onnx\n")
    with pytest.raises(StoreError, match="does not match"):
        asyncio.run(store.fetch("m", 1))


def test_poll_interval_picks_up_a_new_version(tmp_path):
    write_model(tmp_path, "m", [1])

    async def run():
        config = RegistryConfig(models=str(tmp_path), poll_interval_s=0.05)
        loader = HotSwapLoader(LocalStore(tmp_path), config, Metrics())
        try:
            await loader.start()
            assert loader.models["m"].ready_versions() == [1]
            write_version(tmp_path, "m", 2)
            for _ in range(200):
                if loader.models["m"].ready_versions() == [2]:
                    return True
                await asyncio.sleep(0.02)
            return False
        finally:
            await loader.close()

    assert asyncio.run(run())


def test_eager_start_loads_only_what_the_budget_allows(tmp_path):
    for i in range(6):
        write_model(tmp_path, f"m{i}", [1])

    async def run():
        config = RegistryConfig(models=str(tmp_path), max_loaded_models=4)
        loader = HotSwapLoader(LocalStore(tmp_path), config, Metrics())
        try:
            await loader.start()
            resident = sorted(m.name for m in loader.models.values() if m.is_resident)
            await loader.ensure_loaded("m5")  # over the cap: the least recently used idle model leaves
            after = sorted(m.name for m in loader.models.values() if m.is_resident)
            return resident, after
        finally:
            await loader.close()

    resident, after = asyncio.run(run())
    assert len(resident) == 4 and len(after) == 4 and "m5" in after
