"""The response cache through the real loader and service, in process: a reloaded artifact under the
same version number must not answer from the old artifact's cache."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort

from mlserve.batching.cache import ResponseCache, input_key
from mlserve.config import RegistryConfig
from mlserve.examples import write_mlp_onnx
from mlserve.monitor.metrics import Metrics
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.local import LocalStore
from mlserve.routing.service import InferenceService
from mlserve.spec.infer import InferRequest


def test_a_reloaded_version_never_serves_the_old_cached_answer(tmp_path):
    path = tmp_path / "mlp" / "1" / "model.onnx"
    write_mlp_onnx(path, seed=1)
    (tmp_path / "mlp" / "model.toml").write_text("cache_size = 4\n")
    x = np.random.default_rng(3).standard_normal((1, 768), dtype=np.float32)

    async def main():
        loader = HotSwapLoader(LocalStore(tmp_path), RegistryConfig(models=str(tmp_path)), Metrics())
        service = InferenceService(loader)
        await loader.reconcile()
        request = InferRequest("mlp", None, {"x": x}, {"x": "FP32"})
        before = [(await service.infer(request)).outputs["y"] for _ in range(2)]
        cache_size = len(loader.models["mlp"].versions[1].serving.cache)
        write_mlp_onnx(path, seed=2)  # same version number, new artifact
        await loader.reconcile()
        after = (await service.infer(request)).outputs["y"]
        await loader.close()
        return before, cache_size, after

    before, cache_size, after = asyncio.run(main())
    first = ort.InferenceSession(str(path)).run(None, {"x": x})[0]  # the seed-2 file now on disk
    np.testing.assert_array_equal(before[0], before[1])
    assert cache_size == 1
    np.testing.assert_allclose(after, first, rtol=1e-5, atol=1e-5)
    assert not np.allclose(before[0], after)


def test_keys_depend_on_version_dtype_shape_and_bytes_and_the_lru_evicts():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    base = input_key("m", "1", {"x": x})
    assert base == input_key("m", "1", {"x": x.copy()})
    assert base != input_key("m", "2", {"x": x})
    assert base != input_key("m", "1", {"x": x.reshape(3, 2)})
    assert base != input_key("m", "1", {"x": x.astype(np.float64)})
    assert base != input_key("m", "1", {"x": x + 1})
    assert input_key("m", "1", {"s": np.array([b"ab", b"c"], dtype=object)}) != input_key(
        "m", "1", {"s": np.array([b"a", b"bc"], dtype=object)})
    cache = ResponseCache("m", "1", size=2)
    for i in range(3):
        cache.put(bytes([i]), {"y": np.full(2, i)})
    assert cache.get(bytes([0])) is None and cache.get(bytes([2]))["y"][0] == 2 and len(cache) == 2
    assert not cache.get(bytes([2]))["y"].flags.writeable
