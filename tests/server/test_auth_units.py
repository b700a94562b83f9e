"""Pure cores of access control: the path policy, token buckets with an injected clock, and the
priority a key gives its requests."""

from __future__ import annotations

import json

from mlserve.config import AuthConfig, LimitsConfig
from mlserve.server.auth import Access, PathPolicy, bearer_token
from mlserve.server.http.v2_codec import decode_infer_request
from mlserve.server.infer_rules import with_key_priority
from mlserve.server.ratelimit import InFlight, TenantLimiter, TokenBucket


def test_policy_by_prefix():
    policy = PathPolicy.from_config(AuthConfig(), "127.0.0.1")
    assert policy.access("/v2/health/ready") is Access.OPEN
    assert policy.access("/metrics") is Access.OPEN
    assert policy.access("/v2/repository/index") is Access.ADMIN
    assert policy.access("/admin/models/mlp/load") is Access.ADMIN
    assert policy.access("/v2/models/mlp/infer") is Access.INFER
    assert policy.access("/v1/chat/completions") is Access.INFER
    assert policy.access("/administrator") is Access.INFER  # a prefix is a whole path segment
    assert policy.access("/v2/health") is Access.INFER


def test_admin_is_off_on_a_public_address_unless_enabled():
    assert PathPolicy.from_config(AuthConfig(), "0.0.0.0").access("/v2/repository/index") is Access.DISABLED
    assert PathPolicy.from_config(AuthConfig(admin_enabled=True), "0.0.0.0").access("/admin/x") is Access.ADMIN
    assert PathPolicy.from_config(AuthConfig(), "::1").access("/admin/x") is Access.ADMIN


def test_metrics_can_require_a_key():
    assert PathPolicy.from_config(AuthConfig(metrics_open=False), "127.0.0.1").access("/metrics") is Access.INFER


def test_bearer_parsing():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_token_bucket_refills_at_its_rate():
    bucket = TokenBucket(rate=2.0, burst=2.0)
    assert bucket.try_take(0.0) is None and bucket.try_take(0.0) is None
    assert bucket.try_take(0.0) == 0.5
    assert bucket.try_take(0.25) == 0.25
    assert bucket.try_take(0.5) is None


def test_tenant_limits_and_reload_keep_counts():
    now = [0.0]
    limiter = TenantLimiter(clock=lambda: now[0])
    limiter.configure("k", rps=0, concurrency=2)
    assert limiter.acquire("k") is None and limiter.acquire("k") is None
    refusal = limiter.acquire("k")
    assert refusal is not None and "limit 2" in refusal.reason
    limiter.configure("k", rps=0, concurrency=3)  # a reload raises the limit; the two in flight still count
    assert limiter.acquire("k") is None and limiter.acquire("k") is not None
    limiter.release("k")
    assert limiter.acquire("unknown") is None


def test_in_flight_bound():
    bound = InFlight(2)
    assert bound.try_acquire() and bound.try_acquire() and not bound.try_acquire()
    assert bound.is_saturated
    bound.release()
    assert not bound.is_saturated


def _decoded(parameters):
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 0]}],
                       "parameters": parameters}).encode()
    return decode_infer_request(body, None, "m", None, {}, LimitsConfig())


def test_key_priority_is_given_unless_the_client_names_one():
    assert with_key_priority(_decoded({}).request, 3).policy.priority == 3
    assert with_key_priority(_decoded({"priority": 1}).request, 3).policy.priority == 1
    assert with_key_priority(_decoded({}), None).request.policy.priority is None


def test_key_verification_is_bounded_and_remembered(tmp_path, monkeypatch):
    import asyncio

    from mlserve import keys
    from mlserve.errors import Overloaded
    from mlserve.server import auth
    from mlserve.server.auth import KeyRing

    monkeypatch.setattr(auth, "MAX_VERIFYING", 4)

    token = keys.create_key(tmp_path / "keys.json", "a", ("infer",))
    key_id = keys.split_token(token)[0]
    ring = KeyRing(tmp_path / "keys.json", TenantLimiter())

    async def main():
        assert (await ring.authenticate(token)).key.name == "a"
        forged = [f"mls_{key_id}_{i:043d}" for i in range(4 + 8)]
        results = await asyncio.gather(*(ring.authenticate(t) for t in forged), return_exceptions=True)
        assert sum(isinstance(r, Overloaded) for r in results) == 8
        assert all(r.key is None for r in results if not isinstance(r, Overloaded))
        assert (await ring.authenticate(token)).key.name == "a"  # remembered: no hash, no queue

    asyncio.run(main())
    ring.close()


class _CountingVerify:
    """Wraps keys.verify to count the hashes actually computed."""

    def __init__(self, monkeypatch) -> None:
        from mlserve import keys

        self.calls, self._real = 0, keys.verify
        monkeypatch.setattr(keys, "verify", self)

    def __call__(self, key, secret):
        self.calls += 1
        return self._real(key, secret)


def test_verified_keys_survive_a_reload_unless_their_record_changed(tmp_path, monkeypatch):
    import asyncio

    from mlserve import keys
    from mlserve.server.auth import KeyRing

    path = tmp_path / "keys.json"
    token_a, token_b = keys.create_key(path, "a", ("infer",)), keys.create_key(path, "b", ("infer",))
    ring = KeyRing(path, TenantLimiter())
    verify = _CountingVerify(monkeypatch)

    async def main():
        assert (await ring.authenticate(token_a)).key.name == "a"
        assert (await ring.authenticate(token_b)).key.name == "b"
        forged = f"mls_{keys.split_token(token_a)[0]}_{'0' * 43}"
        assert (await ring.authenticate(forged)).key is None
        assert ring.num_remembered == 2  # a wrong token is never remembered
        keys.create_key(path, "c", ("infer",))
        ring.reload()  # SIGHUP with a and b unchanged
        assert ring.num_remembered == 2
        calls = verify.calls
        assert (await ring.authenticate(token_a)).key.name == "a"
        assert verify.calls == calls  # answered from memory after the reload
        keys.revoke_key(path, "b")
        ring.reload()
        assert ring.num_remembered == 1
        assert (await ring.authenticate(token_b)).key is None

    asyncio.run(main())
    ring.close()


def test_the_verified_memory_is_least_recently_used(tmp_path, monkeypatch):
    import asyncio

    from mlserve import keys
    from mlserve.server import auth
    from mlserve.server.auth import KeyRing

    monkeypatch.setattr(auth, "_CACHE_SIZE", 2)
    path = tmp_path / "keys.json"
    tokens = [keys.create_key(path, name, ("infer",)) for name in ("a", "b", "c")]
    ring = KeyRing(path, TenantLimiter())
    verify = _CountingVerify(monkeypatch)

    async def main():
        await ring.authenticate(tokens[0])
        await ring.authenticate(tokens[1])
        await ring.authenticate(tokens[0])  # a is now the most recently used
        await ring.authenticate(tokens[2])  # evicts b, not a
        calls = verify.calls
        await ring.authenticate(tokens[0])
        assert verify.calls == calls
        await ring.authenticate(tokens[1])
        assert verify.calls == calls + 1

    asyncio.run(main())
    ring.close()


def test_failed_checks_are_throttled_per_client_address_and_key(tmp_path):
    import asyncio

    from mlserve import keys
    from mlserve.server.auth import KeyRing
    from mlserve.server.ratelimit import FailureThrottle

    now = [100.0]
    path = tmp_path / "keys.json"
    token = keys.create_key(path, "a", ("infer",))
    other = keys.create_key(path, "b", ("infer",))
    ring = KeyRing(path, TenantLimiter(), FailureThrottle(burst=2, rate=0.5, clock=lambda: now[0]))
    forged = f"mls_{keys.split_token(token)[0]}_{'0' * 43}"

    async def main():
        assert (await ring.authenticate(token, "10.0.0.1")).key.name == "a"  # success costs nothing
        assert (await ring.authenticate(forged, "10.0.0.1")).key is None
        assert (await ring.authenticate(forged, "10.0.0.1")).key is None
        throttled = await ring.authenticate(forged, "10.0.0.1")
        assert throttled.is_throttled and throttled.key is None and throttled.retry_after_s == 2.0
        assert (await ring.authenticate(token, "10.0.0.1")).key.name == "a"  # remembered: never throttled
        assert (await ring.authenticate(other, "10.0.0.1")).key.name == "b"  # another key: its own budget
        assert not (await ring.authenticate(forged, "10.0.0.2")).is_throttled  # another address
        now[0] += 2.0
        assert not (await ring.authenticate(forged, "10.0.0.1")).is_throttled

    asyncio.run(main())
    ring.close()


def test_a_client_opening_many_connections_at_once_is_checked_once_and_never_throttled(tmp_path, monkeypatch):
    """64 requests bring a valid token before its first check ends (wrk -c64 on a cold server). They
    wait for that one check: one hash, 64 admitted. On the old code each spent an attempt of the
    (address, key) budget while in progress, and past the burst the rest were told 429."""
    import asyncio

    from mlserve import keys
    from mlserve.server.auth import KeyRing
    from mlserve.server.ratelimit import FailureThrottle

    path = tmp_path / "keys.json"
    token = keys.create_key(path, "a", ("infer",))
    forged = f"mls_{keys.split_token(token)[0]}_{'0' * 43}"
    hashes = []
    real_verify = keys.verify
    monkeypatch.setattr(keys, "verify", lambda key, secret: hashes.append(secret) or real_verify(key, secret))
    ring = KeyRing(path, TenantLimiter(), FailureThrottle(burst=20, rate=0.01, clock=lambda: 0.0))

    async def main():
        results = await asyncio.gather(*(ring.authenticate(token, "10.0.0.1") for _ in range(64)))
        assert [r.key.name if r.key else r.retry_after_s for r in results] == ["a"] * 64
        assert len(hashes) == 1
        wrong = await asyncio.gather(*(ring.authenticate(forged, "10.0.0.1") for _ in range(64)))
        assert all(r.key is None for r in wrong)  # a wrong token waits for its check too, and fails
        assert len(hashes) == 2

    asyncio.run(main())
    ring.close()


def test_a_flood_of_bad_tokens_from_a_shared_address_cannot_lock_out_a_valid_key(tmp_path):
    """Behind a proxy every client has one address. Tokens that name no live key cost no hash and no
    attempt, so a valid key checked for the first time after the flood still gets in (on the old
    code the address's budget was spent before the key was even looked up: 429)."""
    import asyncio

    from mlserve import keys
    from mlserve.server.auth import KeyRing
    from mlserve.server.ratelimit import FailureThrottle

    path = tmp_path / "keys.json"
    token = keys.create_key(path, "a", ("infer",))
    ring = KeyRing(path, TenantLimiter(), FailureThrottle(burst=3, rate=0.01, clock=lambda: 0.0))
    bad = ["garbage", "mls_000000000000_" + "A" * 43, f"mls_{'z' * 12}_" + "B" * 43, "Bearer x" * 50]

    async def main():
        for i in range(100):
            assert (await ring.authenticate(bad[i % len(bad)], "10.0.0.1")).key is None
        result = await ring.authenticate(token, "10.0.0.1")
        assert not result.is_throttled and result.key.name == "a"

    asyncio.run(main())
    ring.close()


def test_the_client_address_comes_from_x_forwarded_for_only_behind_a_trusted_proxy():
    from mlserve.server.auth import TrustedProxies

    none = TrustedProxies.parse(())
    assert none.client_address("10.0.0.1", "203.0.113.9") == "10.0.0.1"  # anyone can write the header
    proxies = TrustedProxies.parse(("127.0.0.1", "10.0.0.0/8"))
    assert proxies.client_address("127.0.0.1", "203.0.113.9") == "203.0.113.9"
    assert proxies.client_address("::ffff:127.0.0.1", "203.0.113.9") == "203.0.113.9"
    assert proxies.client_address("127.0.0.1", None) == "127.0.0.1"
    # Each proxy appends its peer: the nearest hop that is not a proxy is the client, whatever it wrote.
    assert proxies.client_address("127.0.0.1", "1.1.1.1, 203.0.113.9, 10.1.1.1") == "203.0.113.9"
    assert proxies.client_address("127.0.0.1", "10.2.2.2, 10.1.1.1") == "10.2.2.2"
    assert proxies.client_address("127.0.0.1", "203.0.113.9, not-an-address") == "127.0.0.1"
    assert proxies.client_address("192.0.2.1", "203.0.113.9") == "192.0.2.1"  # an untrusted peer


def test_the_throttle_remembers_a_bounded_number_of_addresses(monkeypatch):
    from mlserve.server import ratelimit
    from mlserve.server.ratelimit import FailureThrottle

    monkeypatch.setattr(ratelimit, "MAX_THROTTLED_CLIENTS", 5)
    throttle = FailureThrottle(burst=1, rate=1.0, clock=lambda: 0.0)
    for i in range(50):
        assert throttle.try_attempt(f"10.0.{i}.1") is None
    assert throttle.num_clients == 5
    assert throttle.try_attempt("10.0.49.1") is not None  # the most recent are the ones kept


def test_a_grpc_request_asks_its_batch_for_the_grpc_quiet_turns_and_an_http_one_for_one():
    from mlserve.server.grpc import codec as grpc_codec
    from mlserve.server.proto import grpc_service_pb2 as pb

    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    message.raw_input_contents.append(bytes(12))
    decoded = grpc_codec.decode_infer_request(message, {}, LimitsConfig(), 0.0)
    assert decoded.policy.quiet_turns == grpc_codec.QUIET_TURNS > 1
    assert _decoded({}).request.policy.quiet_turns == 1
