"""The StateStore contract, held by both implementations: MemoryStore and RedisStore on a real
redis-server. Each test runs once per store, with its own key prefix."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import pytest

from mlserve.state import BadStateData, MemoryStore, Share, StateUnavailable, open_state
from mlserve.state.redis_store import RedisStore
from mlserve.config import check_state_url as check_url
from mlserve.state.url import redacted

_prefixes = itertools.count()


@pytest.fixture(params=["memory", "redis"])
def make_store(request):
    """An async factory: the store under test, started (closed by the test's `run`)."""
    if request.param == "memory":
        return lambda: MemoryStore()
    server = request.getfixturevalue("redis_server")
    prefix = f"t{next(_prefixes)}-{uuid.uuid4().hex[:6]}"
    return lambda: RedisStore(server.url, prefix)


def run(make_store, scenario):
    async def main():
        store = make_store()
        await store.start()
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


def test_documents_version_and_compare_and_set(make_store):
    async def scenario(store):
        assert await store.get("doc") is None
        first = await store.put("doc", {"split": {"1": 50}}, expect=0)
        assert first.version == 1
        assert await store.put("doc", {"split": {"1": 60}}, expect=0) is None  # a stale writer loses
        second = await store.put("doc", {"split": {"1": 70}}, expect=1)
        assert second.version == 2
        assert (await store.put("doc", {"split": {"1": 80}})).version == 3  # last writer wins
        got = await store.get("doc")
        assert got.version == 3 and got.data == {"split": {"1": 80}}
        await store.delete("doc")
        assert await store.get("doc") is None
        await store.delete("doc")  # absent: nothing happens
        assert (await store.put("doc", {"a": 1}, expect=0)).version == 1  # a deleted document starts over

    run(make_store, scenario)


def test_notices_reach_subscribers(make_store):
    async def scenario(store):
        seen: asyncio.Queue = asyncio.Queue()
        store.subscribe("control", seen.put_nowait)
        # Redis subscribes from its supervisor: publish until the first notice arrives.
        for _ in range(50):
            await store.publish("control", "m:1")
            try:
                assert await asyncio.wait_for(seen.get(), 0.1) == "m:1"
                break
            except asyncio.TimeoutError:
                continue
        else:
            pytest.fail("no notice delivered")
        await store.publish("control", "m:2")
        assert await asyncio.wait_for(seen.get(), 2) in ("m:1", "m:2")

    run(make_store, scenario)


def test_counters_hashes_values_and_leases(make_store):
    async def scenario(store):
        assert await store.incr("c", 3, ttl_s=60) == 3
        assert await store.incr("c", 2, ttl_s=60) == 5
        snapshot = await store.hincr("h", {"n:1": 1, "s:1": 0.5})
        assert snapshot == {"n:1": 1.0, "s:1": 0.5}
        assert (await store.hincr("h", {"n:1": 1}))["n:1"] == 2.0
        assert await store.hgetall("h") == {"n:1": 2.0, "s:1": 0.5}
        assert (await store.hincr("h", {"n:1": 1}, once="batch-7"))["n:1"] == 3.0
        assert (await store.hincr("h", {"n:1": 1}, once="batch-7"))["n:1"] == 3.0  # a retry counts once
        assert await store.hgetall("none") == {}
        assert await store.hset_min("h", "p", 0.4) == 0.4
        assert await store.hset_min("h", "p", 0.9) == 0.4
        assert await store.hset_min("h", "p", 0.1) == 0.1
        assert await store.set_once("v", "1", ttl_s=60) is True
        assert await store.set_once("v", "2", ttl_s=60) is False
        assert await store.get_value("v") == "1"
        await store.set_many({"a": "x", "b": "y"}, ttl_s=60)
        assert [await store.get_value(k) for k in ("a", "b", "zz")] == ["x", "y", None]
        assert await store.hadd_capped("ha", {"r1": 1, "r2": 2}, cap=3, ttl_s=60) is True
        assert await store.hadd_capped("ha", {"r3": 2, "r4": 1}, cap=3, ttl_s=60) is True  # under the cap: all
        assert await store.hadd_capped("ha", {"r5": 1}, cap=3, ttl_s=60) is False  # at the cap: nothing
        assert [await store.hget("ha", f) for f in ("r1", "r4", "r5")] == [1.0, 1.0, None]
        assert await store.hget("none", "r1") is None
        assert await store.lease("l", "me", 5) is True
        assert await store.lease("l", "you", 5) is False
        assert await store.lease("l", "me", 5) is True  # renewed by its holder
        await store.release("l", "you")  # not the holder: nothing happens
        assert await store.lease("l", "you", 5) is False
        await store.release("l", "me")
        assert await store.lease("l", "you", 5) is True

    run(make_store, scenario)


def test_a_short_ttl_expires(make_store):
    async def scenario(store):
        assert await store.set_once("short", "1", ttl_s=0.05)
        assert await store.lease("lease", "a", 0.05)
        await asyncio.sleep(0.2)
        assert await store.get_value("short") is None
        assert await store.lease("lease", "b", 5)

    run(make_store, scenario)


def test_a_key_of_the_wrong_kind_is_refused_by_name(make_store):
    async def scenario(store):
        await store.hincr("stats", {"n": 1})
        with pytest.raises(BadStateData, match="stats"):
            await store.get("stats")
        with pytest.raises(BadStateData, match="stats"):
            await store.put("stats", {"x": 1})
        await store.set_once("text", "hello", ttl_s=60)
        with pytest.raises(BadStateData, match="text"):
            await store.hgetall("text")

    run(make_store, scenario)


def test_bytes_live_for_their_ttl_and_an_index_keeps_the_newest(make_store):
    async def scenario(store):
        assert await store.get_bytes("blob") is None
        await store.set_bytes("blob", b"\x00\xffraw", ttl_s=60)
        assert await store.get_bytes("blob") == b"\x00\xffraw"
        for i in range(5):
            await store.set_bytes(f"c:{i}", bytes([i]), ttl_s=60, index="c-index", max_entries=3)
            await asyncio.sleep(0.002)  # distinct write times
        assert [await store.get_bytes(f"c:{i}") for i in range(5)] == [None, None, b"\x02", b"\x03", b"\x04"]
        await store.set_bytes("short", b"x", ttl_s=0.05)
        await asyncio.sleep(0.2)
        assert await store.get_bytes("short") is None
        await store.hincr("stats", {"n": 1})
        with pytest.raises(BadStateData, match="stats"):
            await store.get_bytes("stats")

    run(make_store, scenario)


def test_shares_of_a_limit_add_up_and_a_silent_owner_s_share_expires(make_store):
    async def scenario(store):
        assert await store.claim_share("conc", "a", 3, 4, ttl_s=60) == Share(3, 1)
        assert await store.claim_share("conc", "b", 3, 4, ttl_s=60) == Share(1, 2)  # only 1 left
        assert await store.claim_share("conc", "a", 1, 4, ttl_s=60) == Share(1, 2)  # a gives 2 back
        assert await store.claim_share("conc", "b", 3, 4, ttl_s=60) == Share(3, 2)
        assert await store.claim_share("conc", "c", 2, 4, ttl_s=0.05) == Share(0, 3)
        assert await store.claim_share("conc", "a", 0, 4, ttl_s=0.05) == Share(0, 3)
        await asyncio.sleep(0.2)  # a and c fall silent: their shares expire
        assert await store.claim_share("conc", "b", 4, 4, ttl_s=60) == Share(4, 1)

    run(make_store, scenario)


def test_redis_documents_of_another_schema_or_not_json_are_refused_by_name(redis_server):
    import redis

    client = redis.Redis.from_url(redis_server.url)
    prefix = f"bad-{uuid.uuid4().hex[:6]}"
    client.set(f"{prefix}:other", b'{"schema": 99, "version": 1, "data": {}}')
    client.set(f"{prefix}:garbage", b"\x00not json")
    client.hset(f"{prefix}:h", "n", "lots")

    async def scenario(store):
        with pytest.raises(BadStateData, match="'other' has schema 99"):
            await store.get("other")
        with pytest.raises(BadStateData, match="'garbage' does not hold JSON"):
            await store.get("garbage")
        with pytest.raises(BadStateData, match="'garbage'"):
            await store.put("garbage", {"x": 1})
        with pytest.raises(BadStateData, match="'h'"):
            await store.hgetall("h")

    run(lambda: RedisStore(redis_server.url, prefix), scenario)


def _turning_a_cancel_into_a_connection_error(entered: asyncio.Event):
    """A client call that waits until cancelled, then raises what redis-py raises when a cancel lands
    inside a command: a ConnectionError ("Connection closed by the server before write")."""
    from redis import exceptions as rex

    async def call(*args, **kwargs):
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise rex.ConnectionError("Connection closed by the server before write") from None
    return call


def test_a_cancel_the_redis_client_turns_into_an_error_stays_a_cancel(redis_server):
    """A cancelled caller is not a lost store, and close() stops the supervisor even when its cancel is
    turned into an error inside a ping (a supervisor that pinged on held asyncio.run's close for ever)."""
    events: list[bool] = []

    async def scenario():
        store = RedisStore(redis_server.url, f"cancel-{uuid.uuid4().hex[:6]}")
        store.on_health(events.append)
        await store.start()
        supervisor = store._supervisor
        entered = asyncio.Event()
        try:
            store._client.get = _turning_a_cancel_into_a_connection_error(entered)
            caller = asyncio.create_task(store.get("doc"))
            await entered.wait()
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
            assert store.is_up and events == [True]

            entered.clear()
            store._client.ping = _turning_a_cancel_into_a_connection_error(entered)
            await entered.wait()  # the supervisor is inside its ping
        finally:
            await store.close()
        assert supervisor.done() and events == [True]

    asyncio.run(scenario())


def test_a_redis_that_is_away_raises_state_unavailable_and_comes_back(tmp_path):
    from tests.state.redis_server import RedisServer, has_redis

    if not has_redis():
        pytest.skip("redis-server not installed")
    server = RedisServer(tmp_path).start()
    events: list[bool] = []

    async def scenario():
        store = RedisStore(server.url, "away")
        store.on_health(events.append)
        await store.start()
        try:
            assert store.is_up and events == [True]
            server.stop()
            with pytest.raises(StateUnavailable):
                await store.incr("c")
            assert not store.is_up and events == [True, False]
            server.start()
            for _ in range(100):
                if store.is_up:
                    break
                await asyncio.sleep(0.05)
            assert events == [True, False, True]
            assert await store.incr("c") == 1
        finally:
            await store.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_a_password_protected_redis(tmp_path):
    from tests.state.redis_server import RedisServer, has_redis

    if not has_redis():
        pytest.skip("redis-server not installed")
    server = RedisServer(tmp_path, password="s3cret").start()

    async def scenario():
        store = open_state(server.url, "pw")
        await store.start()
        try:
            assert await store.incr("c") == 1
            assert "s3cret" not in store.describe()
        finally:
            await store.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


@pytest.mark.parametrize("url, message", [
    ("http://host:6379", "scheme 'http'"),
    ("redis://", "names no host"),
    ("redis://host:99999/0", "not a valid URL"),
    ("redis://host:6379/zero", "database must be a number"),
    ("redis://host/0?password=x", "no query"),
    ("mem", "scheme ''"),
])
def test_malformed_urls_are_refused_by_name(url, message):
    with pytest.raises(ValueError, match=message):
        check_url(url)


def test_passwords_are_redacted():
    assert redacted("rediss://:pw@host:6380/1") == "rediss://:***@host:6380/1"
    assert redacted("redis://user:pw@host/0") == "redis://user:***@host/0"


def test_the_memory_store_forgets_expired_keys_nobody_reads_again():
    """A long-running process writes a batch id per flush and never reads it back: expired ones must
    go, or memory grows by one key per flush forever (on the old code all 10,000 stayed)."""
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])

    async def scenario():
        for i in range(10_000):
            now[0] += 0.05
            await store.set_once(f"exp:batch:{i}", "1", ttl_s=60)
            await store.hincr("exp:m:h", {"r:1": 1}, ttl_s=3600)  # renewed each time: stays
        assert len(store._values) <= 60 / 0.05 + 10
        assert len(store._deadlines) <= len(store._expiry) + 1
        assert (await store.hgetall("exp:m:h"))["r:1"] == 10_000

    asyncio.run(scenario())
