"""The response cache's shared level (mlserve/batching/cache.py) on a real redis-server: what one
replica computed, another answers from; a store that is away costs nothing but the miss."""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
import pytest

from mlserve.batching.cache import ResponseCache, SharedLevel, decode_outputs, encode_outputs
from mlserve.spec.model import BatchingSpec
from mlserve.state.redis_store import RedisStore
from tests.state.conftest import redis_server  # noqa: F401  (the session's redis-server fixture)


class Count:
    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


def _replica(url: str, prefix: str, spec: BatchingSpec, fingerprint: str = "f" * 64):
    store = RedisStore(url, prefix)
    hits, misses = Count(), Count()
    shared = SharedLevel(store, "mlp", "1", fingerprint, spec, hits, misses)
    return store, ResponseCache("mlp", "1", 8, shared=shared), hits, misses


async def _written(cache: ResponseCache) -> None:
    while cache.shared.num_pending:
        await asyncio.sleep(0.01)


def test_outputs_round_trip_through_bytes_and_a_large_one_is_not_encoded():
    outputs = {"y": np.arange(12, dtype=np.float32).reshape(3, 4), "label": np.array([b"cat", b"", b"d\x00g"], dtype=object),
               "ok": np.array([True, False])}
    back = decode_outputs(encode_outputs(outputs, 1 << 20))
    assert set(back) == set(outputs)
    np.testing.assert_array_equal(back["y"], outputs["y"])
    assert back["y"].dtype == np.float32 and list(back["label"]) == [b"cat", b"", b"d\x00g"]
    np.testing.assert_array_equal(back["ok"], outputs["ok"])
    assert encode_outputs({"y": np.zeros(1000, dtype=np.float64)}, 7999) is None
    with pytest.raises(ValueError, match="not a cached response"):
        decode_outputs(b"MLC1\xff\xff\xff\xffjunk")


def test_a_response_computed_on_one_replica_is_answered_on_another(redis_server):  # noqa: F811
    prefix = f"sc-{uuid.uuid4().hex[:6]}"
    spec = BatchingSpec(cache_size=8)

    async def main():
        store_a, cache_a, _, _ = _replica(redis_server.url, prefix, spec)
        store_b, cache_b, hits_b, misses_b = _replica(redis_server.url, prefix, spec)
        other_store, other_artifact, _, _ = _replica(redis_server.url, prefix, spec, fingerprint="0" * 64)
        for store in (store_a, store_b, other_store):
            await store.start()
        try:
            x = {"x": np.ones((1, 4), dtype=np.float32)}
            key = cache_a.key(x)
            assert cache_b.get(key) is None and await cache_b.get_shared(key) is None
            assert misses_b.value == 1
            cache_a.put(key, {"y": np.full((1, 2), 7.0, dtype=np.float32)})
            await _written(cache_a)
            got = await cache_b.get_shared(key)
            np.testing.assert_array_equal(got["y"], np.full((1, 2), 7.0, dtype=np.float32))
            assert hits_b.value == 1 and len(cache_b) == 1 and cache_b.get(key) is not None  # filled locally
            assert await other_artifact.get_shared(key) is None  # another artifact never answers from it
        finally:
            for store in (store_a, store_b, other_store):
                await store.close()

    asyncio.run(main())


def test_the_shared_level_caps_entries_and_value_size(redis_server):  # noqa: F811
    prefix = f"sc-{uuid.uuid4().hex[:6]}"
    spec = BatchingSpec(cache_size=8, shared_cache_entries=2, shared_cache_max_bytes=64)

    async def main():
        store, cache, _, _ = _replica(redis_server.url, prefix, spec)
        reader_store, reader, _, _ = _replica(redis_server.url, prefix, spec)
        await store.start()
        await reader_store.start()
        try:
            keys = [cache.key({"x": np.full((1,), i, dtype=np.float32)}) for i in range(4)]
            for i, key in enumerate(keys[:3]):
                cache.put(key, {"y": np.full((2,), i, dtype=np.float32)})
                await _written(cache)
            cache.put(keys[3], {"y": np.zeros(100, dtype=np.float32)})  # 400 bytes: over the cap
            await _written(cache)
            found = [await reader.get_shared(k) is not None for k in keys]
            assert found == [False, True, True, False]
        finally:
            await store.close()
            await reader_store.close()

    asyncio.run(main())


def test_a_store_that_is_away_is_a_quick_miss_and_writes_are_skipped(tmp_path):
    async def main():
        store, cache, hits, misses = _replica("redis://127.0.0.1:1/0", "away", BatchingSpec(cache_size=8))
        await store.start()  # logged, not fatal
        try:
            key = cache.key({"x": np.zeros(1, dtype=np.float32)})
            started = time.monotonic()
            assert await cache.get_shared(key) is None
            cache.put(key, {"y": np.zeros(1, dtype=np.float32)})
            assert time.monotonic() - started < 0.5
            assert cache.shared.num_pending == 0 and cache.get(key) is not None  # kept locally all the same
        finally:
            await store.close()

    asyncio.run(main())
