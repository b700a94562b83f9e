"""GPU placement and memory budgets, with a fixed inventory of GPUs standing in for real ones: which
device a version goes to, what it may take there, what a version that does not fit is told, and which
idle models leave a GPU for a version a request waits for. The CUDA path itself is checked on a GPU
by benchmarks/gpu_check.sh."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mlserve.config import RegistryConfig
from mlserve.engine.devices import DeviceMemory, StaticInventory
from mlserve.errors import ModelLoadError
from mlserve.monitor.metrics import Metrics
from mlserve.registry.loader import HotSwapLoader, VersionState
from mlserve.registry.local import LocalStore
from mlserve.registry.placement import GpuLedger, NoRoom, gpu_need
from mlserve.spec import ModelConfig
from tests.registry.helpers import MODEL_TOML, WIDTH, version_offset, write_model

GIB = 2**30
MIB = 2**20


def _gpus(*free_gib: float, total_gib: float = 16) -> StaticInventory:
    return StaticInventory([DeviceMemory(f"cuda:{i}", int(total_gib * GIB), int(f * GIB)) for i, f in enumerate(free_gib)])


# ---- the ledger alone --------------------------------------------------------------------------

def test_auto_picks_the_gpu_with_the_most_room_and_cpu_where_no_gpu_serves_the_backend():
    ledger = GpuLedger(_gpus(6, 12, 9), fraction=0.9)
    assert ledger.choose("auto", "onnx", 1 * GIB, "declared") == "cuda:1"
    assert ledger.choose("auto", "embedding", 1 * GIB, "declared") == "cpu"  # a CPU-only backend
    assert GpuLedger(StaticInventory([]), 0.9).choose("auto", "onnx", GIB, "declared") == "cpu"
    assert ledger.choose("cpu", "onnx", 100 * GIB, "declared") == "cpu"
    assert ledger.choose("cuda", "onnx", GIB, "declared") == "cuda:0"


def test_a_gpu_that_is_not_there_is_named_with_the_ones_that_are():
    with pytest.raises(ModelLoadError, match=r"cuda:3 but mlserve sees no such GPU \(visible: cuda:0, cuda:1\)"):
        GpuLedger(_gpus(8, 8), 0.9).choose("cuda:3", "onnx", GIB, "declared")
    with pytest.raises(ModelLoadError, match=r"visible: none"):
        GpuLedger(StaticInventory([]), 0.9).choose("cuda", "onnx", GIB, "declared")


def test_mlserve_holds_at_most_its_share_of_each_gpu_and_counts_loads_in_progress():
    ledger = GpuLedger(_gpus(16), fraction=0.5)  # 8 GiB of the 16 are mlserve's
    ledger.reserve(1, "a", "a/1", "cuda:0", 5 * GIB)
    ledger.settle(1, measured=None, declared=True)
    with pytest.raises(NoRoom) as caught:
        ledger.choose("auto", "onnx", 4 * GIB, "declared")
    # the driver still says 16 GiB free (the fixed inventory allocated nothing): the share decides
    assert "needs 4,096 MiB of GPU memory (declared" in str(caught.value)
    assert "cuda:0 has 3,072 MiB left of mlserve's share (0.5 of 16,384 MiB; 5,120 MiB held by loaded models" in str(caught.value)
    assert ledger.choose("auto", "onnx", 3 * GIB, "declared") == "cuda:0"
    # a reservation for a load in progress is not in the driver's free figure yet: it counts against both
    small = GpuLedger(_gpus(4, total_gib=80), fraction=0.9)
    small.reserve(2, "b", "b/1", "cuda:0", 3 * GIB)
    with pytest.raises(NoRoom):
        small.choose("cuda:0", "onnx", 2 * GIB, "declared")


def test_a_measured_figure_replaces_the_estimate_and_the_estimate_comes_from_the_files():
    assert gpu_need(ModelConfig(gpu_memory_mb=1500), 10) == (1500 * MIB, "declared")
    need, source = gpu_need(ModelConfig(), 400 * MIB)
    assert source == "estimated" and need == int(400 * MIB * 1.25) + 64 * MIB
    ledger = GpuLedger(_gpus(16), 0.9)
    ledger.reserve(7, "m", "m/1", "cuda:0", need)
    assert ledger.settle(7, measured=3 * GIB, declared=False).num_bytes == 3 * GIB
    assert ledger.used("cuda:0") == 3 * GIB
    ledger.release(7)
    assert ledger.used("cuda:0") == 0


def test_model_toml_device_and_gpu_memory_keys_are_checked():
    assert ModelConfig(device="auto", gpu_memory_mb=512).device == "auto"
    with pytest.raises(ValueError, match="device must be cpu, cuda, cuda:N or auto"):
        ModelConfig(device="gpu")
    with pytest.raises(ValueError, match="gpu_memory_mb must be a positive number"):
        ModelConfig(gpu_memory_mb=0)
    with pytest.raises(ValueError, match="gpu_memory_mb is set but device is cpu"):
        ModelConfig(device="cpu", gpu_memory_mb=100)
    with pytest.raises(ValueError, match="gpu_memory_fraction must be in"):
        RegistryConfig(gpu_memory_fraction=0)
    with pytest.raises(ValueError, match="default_device must be"):
        RegistryConfig(default_device="tpu")


# ---- the loader with GPUs standing in ----------------------------------------------------------

class _OnFakeGpu:
    """The real ONNX backend (run on the CPU) holding `num_bytes` of a stand-in GPU while loaded."""

    def __init__(self, inner, inventory: StaticInventory, device: str, num_bytes: int) -> None:
        self._inner, self._inventory, self._device, self._num_bytes = inner, inventory, device, num_bytes
        if device != "cpu":
            inventory.take(device, num_bytes)

    def infer(self, inputs):
        return self._inner.infer(inputs)

    def unload(self) -> None:
        self._inner.unload()
        if self._device != "cpu":
            self._inventory.take(self._device, -self._num_bytes)

    @property
    def info(self):
        return self._inner.info


class _Loader(HotSwapLoader):
    """Loads every version on the CPU while a stand-in GPU records what it "takes" (`takes`, bytes per model)."""

    def __init__(self, root, inventory: StaticInventory, takes: dict[str, int], **config) -> None:
        super().__init__(LocalStore(root), RegistryConfig(models=str(root), **config), Metrics(), inventory)
        self.inventory, self.takes, self.devices, self.caps = inventory, takes, [], {}

    def _load_backend(self, name, config, path, device, trust, cap):
        model = path.parent.name
        self.devices.append((model, device))
        self.caps[model] = cap
        inner = super()._load_backend(name, config, path, "cpu", trust, None)
        return _OnFakeGpu(inner, self.inventory, device, self.takes.get(model, 0))


def _gpu_model(root, name: str, extra: str) -> None:
    write_model(root, name, [1], extra + "\n" + MODEL_TOML)


async def _answer(loader: HotSwapLoader, name: str) -> np.ndarray:
    served = loader.models[name]
    version = served.versions[served.default_version()]
    x = np.ones((1, WIDTH), np.float32)
    out = await version.serving.batcher.submit({"x": x}, 1)
    return out["y"] - x


def test_versions_go_where_there_is_room_and_hold_what_their_load_measured(tmp_path):
    _gpu_model(tmp_path, "a", 'device = "auto"\ngpu_memory_mb = 2048')
    _gpu_model(tmp_path, "b", 'device = "cuda:0"\ngpu_memory_mb = 2048')
    _gpu_model(tmp_path, "c", 'device = "auto"')

    async def run():
        loader = _Loader(tmp_path, _gpus(10, 14), {"a": 3 * GIB, "b": 1 * GIB, "c": 512 * MIB})
        try:
            await loader.reconcile("startup")
            versions = {n: loader.models[n].versions[1] for n in "abc"}
            answers = {n: await _answer(loader, n) for n in "abc"}
            metric = loader._metrics.model_gpu_memory.labels("a", "1", versions["a"].device)._value.get()
            return {n: v.state for n, v in versions.items()}, versions, answers, metric, loader.caps
        finally:
            await loader.close()

    states, versions, answers, metric, caps = asyncio.run(run())
    assert set(states.values()) == {VersionState.READY}
    assert versions["b"].device == "cuda:0"
    assert versions["a"].device in ("cuda:0", "cuda:1") and versions["c"].device in ("cuda:0", "cuda:1")
    # what the loads took (measured through the driver's free figure), not what was declared
    assert versions["a"].gpu_bytes == metric == 3 * GIB and versions["b"].gpu_bytes == GIB
    assert all(cap is not None and cap > 0 for cap in caps.values())
    for answer in answers.values():
        np.testing.assert_array_equal(answer, version_offset(1)[None, :])


def test_a_version_that_does_not_fit_is_unavailable_with_the_figures_until_a_request_makes_room(tmp_path):
    _gpu_model(tmp_path, "a", 'device = "cuda"\ngpu_memory_mb = 5120')
    _gpu_model(tmp_path, "b", 'device = "cuda"\ngpu_memory_mb = 5120')
    _gpu_model(tmp_path, "huge", 'device = "cuda"\ngpu_memory_mb = 20480')

    async def run():
        takes = {"a": 5 * GIB, "b": 5 * GIB}
        loader = _Loader(tmp_path, _gpus(16), takes, gpu_memory_fraction=0.5)
        try:
            await loader.reconcile("startup")
            states = {n: (m.versions[1].state, m.versions[1].reason) for n, m in loader.models.items()}
            loaded = next(n for n in "ab" if states[n][0] is VersionState.READY)
            other = "b" if loaded == "a" else "a"
            await loader.ensure_loaded(other)  # a request waits: the idle model leaves the GPU
            after = {n: loader.models[n].is_resident for n in "ab"}
            answer = await _answer(loader, other)
            await loader.ensure_loaded("huge")  # never fits: nothing is evicted for it
            still = loader.models[other].is_resident
            return states, loaded, other, after, answer, still, loader.ledger.used("cuda:0")
        finally:
            await loader.close()

    states, loaded, other, after, answer, still, used = asyncio.run(run())
    state, reason = states[other]
    assert state is VersionState.UNAVAILABLE
    assert reason.startswith("placement failed: needs 5,120 MiB of GPU memory (declared")
    assert "cuda:0 has 3,072 MiB left of mlserve's share (0.5 of 16,384 MiB; 5,120 MiB held by loaded models" in reason
    assert after == {loaded: False, other: True}
    np.testing.assert_array_equal(answer, version_offset(1)[None, :])
    huge_state, huge_reason = states["huge"]
    assert huge_state is VersionState.UNAVAILABLE and "more than mlserve's share of any GPU" in huge_reason
    assert still and used == 5 * GIB


def test_a_model_run_alone_resolves_auto_as_the_server_would_with_nothing_loaded():
    from mlserve.registry.placement import device_alone

    assert device_alone("auto", "onnx", _gpus(3, 9)) == "cuda:1"
    assert device_alone("auto", "embedding", _gpus(3, 9)) == "cpu"
    assert device_alone("auto", "onnx", StaticInventory([])) == "cpu"
    assert device_alone("cuda:0", "onnx", StaticInventory([])) == "cuda:0"  # the backend's load says why not


def test_cuda_graph_sizes_on_a_model_pinned_to_the_cpu_are_refused_naming_the_key():
    from mlserve.spec import LLMSettings

    with pytest.raises(ValueError, match=r"\[llm\] cuda_graph_batch_sizes is set but device is cpu"):
        ModelConfig(device="cpu", llm=LLMSettings(cuda_graph_batch_sizes=(1, 8)))
    assert ModelConfig(device="auto", llm=LLMSettings(cuda_graph_batch_sizes=(1, 8))).device == "auto"
