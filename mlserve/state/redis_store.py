"""The StateStore on Redis (redis-py's asyncio client, hiredis parser): what makes N replicas one server.

Every key is `<prefix>:<key>`, so several deployments can share one Redis. Documents are JSON
strings written by one Lua script (compare-and-set and the version bump are one atomic step).

Threading and cost: everything runs on the event loop. One supervisor task pings Redis every
HEALTH_INTERVAL_S, keeps one pub/sub connection subscribed and hands each notice to its handler;
loss and return are logged once each and reported to the health observers (the gauge, and the
callers that re-read their state on return). A command on a lost connection fails within
SOCKET_TIMEOUT_S with StateUnavailable; callers never wait longer than that.

redis-py can turn a cancellation that lands inside a command into a ConnectionError ("Connection
closed by the server"). Where that happens to a task being cancelled, the cancellation is given
back (`_still_cancelled`), so a cancelled caller is not counted as a lost store and the supervisor
stops when closed instead of pinging on forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Mapping

import orjson
import redis.asyncio as aioredis
from redis import exceptions as rex

from mlserve.state.base import ONCE_TTL_S, SCHEMA, BadStateData, Document, Handler, HealthObserver, Share, StateUnavailable, check_document
from mlserve.state.url import redacted

log = logging.getLogger("mlserve.state")

HEALTH_INTERVAL_S = 0.5
SOCKET_TIMEOUT_S = 1.0
RETRY_S = 0.2

_PUT = """
local cur = redis.call('GET', KEYS[1])
local v = 0
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  if not ok or type(doc) ~= 'table' or type(doc['version']) ~= 'number' then
    return redis.error_reply('BADDOC not an mlserve document')
  end
  v = doc['version']
end
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= v then return -1 end
local nv = v + 1
redis.call('SET', KEYS[1], '{"schema":' .. ARGV[3] .. ',"version":' .. nv .. ',"data":' .. ARGV[2] .. '}')
return nv
"""
_INCR = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
"""
_HINCR = """
if #KEYS > 1 and not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then
  return redis.call('HGETALL', KEYS[1])
end
for i = 3, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[1] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return redis.call('HGETALL', KEYS[1])
"""
_HADD_CAPPED = """
local n = redis.call('HLEN', KEYS[1])
if n >= tonumber(ARGV[1]) then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if n == 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""
_HSET_MIN = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur or tonumber(ARGV[2]) < tonumber(cur) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return redis.call('HGET', KEYS[1], ARGV[1])
"""
_LEASE = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


_SET_BYTES = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if #KEYS > 1 then
  local now = tonumber(ARGV[3])
  redis.call('ZADD', KEYS[2], now, KEYS[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
  local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
  if over > 0 then
    local old = redis.call('ZRANGE', KEYS[2], 0, over - 1)
    for _, k in ipairs(old) do redis.call('DEL', k) end
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
"""
_CLAIM_SHARE = """
local now, want, limit, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local others, owners = 0, 1
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    local held, untl = string.match(all[i + 1], '^(%d+):(%d+)$')
    if not held then return redis.error_reply('BADSHARE not an mlserve share') end
    if tonumber(untl) <= now then
      redis.call('HDEL', KEYS[1], all[i])
    else
      others = others + tonumber(held)
      owners = owners + 1
    end
  end
end
local granted = math.max(0, math.min(want, limit - others))
redis.call('HSET', KEYS[1], ARGV[1], granted .. ':' .. (now + ttl))
redis.call('PEXPIRE', KEYS[1], ttl)
return {granted, owners}
"""


def _still_cancelled() -> None:
    """Raise CancelledError if the running task was cancelled and a library turned it into an error."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _ms(ttl_s: float | None) -> str:
    return "" if ttl_s is None else str(max(1, int(ttl_s * 1000)))


class RedisStore:
    """Shared state on one Redis; see the module docstring for its supervisor and costs."""

    def __init__(self, url: str, prefix: str) -> None:
        self._url = url
        self._prefix = prefix
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry_on_timeout=False, decode_responses=False)
        self._scripts = {name: self._client.register_script(body) for name, body in
                         (("put", _PUT), ("incr", _INCR), ("hincr", _HINCR), ("hadd_capped", _HADD_CAPPED),
                          ("hset_min", _HSET_MIN), ("lease", _LEASE), ("release", _RELEASE), ("set_bytes", _SET_BYTES),
                          ("claim_share", _CLAIM_SHARE))}
        self._is_up = False
        self._observers: list[HealthObserver] = []
        self._handlers: dict[str, list[Handler]] = {}
        self._supervisor: asyncio.Task | None = None
        self._pubsub = None
        self._observer_tasks: set[asyncio.Task] = set()
        self._resubscribe = False
        self._closed = False

    @property
    def is_up(self) -> bool:
        return self._is_up

    @property
    def is_shared(self) -> bool:
        return True

    def describe(self) -> str:
        return f"{redacted(self._url)} (prefix {self._prefix!r})"

    def key(self, name: str) -> str:
        return f"{self._prefix}:{name}"

    # -- lifecycle and health ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect once (a Redis that is away is logged, not fatal) and start the supervisor."""
        try:
            await self._client.ping()
            self._set_up(True)
        except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
            _still_cancelled()
            log.warning("state store %s not reachable at start (%s): serving with local state until it is",
                        self.describe(), exc)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def close(self) -> None:
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.wait([self._supervisor], timeout=SOCKET_TIMEOUT_S)
        for task in self._observer_tasks:
            task.cancel()
        await self._drop_pubsub()
        await self._client.aclose()

    def on_health(self, observer: HealthObserver) -> None:
        self._observers.append(observer)

    def _set_up(self, is_up: bool) -> None:
        if is_up == self._is_up or self._closed:
            return
        self._is_up = is_up
        if is_up:
            log.info("state store %s is up: shared state in force", self.describe())
        else:
            log.warning("state store %s lost: keeping the last state, counting locally", self.describe())
        for observer in self._observers:
            result = observer(is_up)
            if asyncio.iscoroutine(result):
                task = asyncio.get_running_loop().create_task(result)
                self._observer_tasks.add(task)
                task.add_done_callback(self._observer_tasks.discard)

    async def _supervise(self) -> None:
        """Ping, keep the subscription, deliver notices; on loss, mark down and retry."""
        while not self._closed:
            try:
                await self._client.ping()
                if self._handlers and (self._pubsub is None or self._resubscribe):
                    await self._drop_pubsub()
                    self._resubscribe = False
                    self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                    await self._pubsub.subscribe(*[self.key(c) for c in self._handlers])
                # Subscribed before observers re-read: no notice falls between the two.
                self._set_up(True)
                await self._deliver()
            except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
                _still_cancelled()
                log.debug("state store: %s", exc)
                self._set_up(False)
                await self._drop_pubsub()
                await asyncio.sleep(RETRY_S)

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await asyncio.wait_for(pubsub.aclose(), SOCKET_TIMEOUT_S)
            except (rex.RedisError, OSError, asyncio.TimeoutError):
                _still_cancelled()  # a half-closed connection: nothing to keep

    async def _deliver(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HEALTH_INTERVAL_S
        while (left := deadline - loop.time()) > 0:
            if self._pubsub is None:
                await asyncio.sleep(left)
                return
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"].decode().removeprefix(self._prefix + ":")
            for handler in self._handlers.get(channel, []):
                try:
                    handler(message["data"].decode("utf-8", "replace"))
                except Exception:
                    log.exception("state notice handler on %s failed", channel)

    # -- calls -------------------------------------------------------------------------------------

    async def _run(self, key: str, command) -> Any:
        """One command; connection trouble -> StateUnavailable, a wrong value -> BadStateData."""
        try:
            return await command
        except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
            _still_cancelled()
            self._set_up(False)
            raise StateUnavailable(f"shared state store unavailable: {exc}") from None
        except rex.ResponseError as exc:
            raise BadStateData(f"state key {key!r}: {exc}") from None

    async def get(self, key: str) -> Document | None:
        raw = await self._run(key, self._client.get(self.key(key)))
        if raw is None:
            return None
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadStateData(f"state key {key!r} does not hold JSON") from None
        data = check_document(key, parsed)
        version = parsed.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise BadStateData(f"state key {key!r} has no valid version")
        return Document(version, data)

    async def put(self, key: str, data: Mapping[str, Any], expect: int | None = None) -> Document | None:
        body = orjson.dumps(dict(data)).decode()
        args = ["" if expect is None else str(expect), body, str(SCHEMA)]
        version = await self._run(key, self._scripts["put"](keys=[self.key(key)], args=args))
        return None if version < 0 else Document(int(version), dict(data))

    async def delete(self, key: str) -> None:
        await self._run(key, self._client.delete(self.key(key)))

    async def publish(self, channel: str, message: str) -> None:
        await self._run(channel, self._client.publish(self.key(channel), message))

    def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers.setdefault(channel, []).append(handler)
        self._resubscribe = True

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        return int(await self._run(key, self._scripts["incr"](keys=[self.key(key)], args=[amount, _ms(ttl_s)])))

    async def hincr(self, key: str, increments: Mapping[str, float], ttl_s: float | None = None,
                    once: str | None = None) -> dict[str, float]:
        args: list[Any] = [_ms(ttl_s), _ms(ONCE_TTL_S)]
        for name, amount in increments.items():
            args += [name, repr(float(amount))]
        keys = [self.key(key)] + ([self.key(once)] if once is not None else [])
        flat = await self._run(key, self._scripts["hincr"](keys=keys, args=args))
        return self._floats(key, dict(zip(flat[::2], flat[1::2])))

    async def hgetall(self, key: str) -> dict[str, float]:
        return self._floats(key, await self._run(key, self._client.hgetall(self.key(key))))

    @staticmethod
    def _floats(key: str, raw: Mapping[bytes, bytes]) -> dict[str, float]:
        try:
            return {k.decode(): float(v) for k, v in raw.items()}
        except (ValueError, UnicodeDecodeError):
            raise BadStateData(f"state key {key!r} holds a field that is not a number") from None

    async def hadd_capped(self, key: str, values: Mapping[str, float], cap: int, ttl_s: float) -> bool:
        args: list[Any] = [cap, _ms(ttl_s)]
        for name, value in values.items():
            args += [name, repr(float(value))]
        return bool(await self._run(key, self._scripts["hadd_capped"](keys=[self.key(key)], args=args)))

    async def hget(self, key: str, field: str) -> float | None:
        raw = await self._run(key, self._client.hget(self.key(key), field))
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            raise BadStateData(f"state key {key!r} field {field!r} is not a number") from None

    async def hset_min(self, key: str, field: str, value: float) -> float:
        raw = await self._run(key, self._scripts["hset_min"](keys=[self.key(key)], args=[field, repr(float(value))]))
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise BadStateData(f"state key {key!r} field {field!r} is not a number") from None

    async def set_once(self, key: str, value: str, ttl_s: float) -> bool:
        return bool(await self._run(key, self._client.set(self.key(key), value, nx=True, px=int(_ms(ttl_s)))))

    async def set_many(self, values: Mapping[str, str], ttl_s: float) -> None:
        pipe = self._client.pipeline(transaction=False)
        for key, value in values.items():
            pipe.set(self.key(key), value, px=int(_ms(ttl_s)))
        await self._run("(batch)", pipe.execute())

    async def get_value(self, key: str) -> str | None:
        raw = await self._run(key, self._client.get(self.key(key)))
        return None if raw is None else raw.decode("utf-8", "replace")

    async def lease(self, key: str, owner: str, ttl_s: float) -> bool:
        return bool(await self._run(key, self._scripts["lease"](keys=[self.key(key)], args=[owner, _ms(ttl_s)])))

    async def release(self, key: str, owner: str) -> None:
        await self._run(key, self._scripts["release"](keys=[self.key(key)], args=[owner]))

    async def get_bytes(self, key: str) -> bytes | None:
        return await self._run(key, self._client.get(self.key(key)))

    async def set_bytes(self, key: str, value: bytes, ttl_s: float, index: str | None = None,
                        max_entries: int = 0) -> None:
        """One script: the value, its place in the index (scored by write time) and the index's cap."""
        keys = [self.key(key)] + ([self.key(index)] if index is not None else [])
        args = [value, _ms(ttl_s), int(time.time() * 1000), max_entries]
        await self._run(key, self._scripts["set_bytes"](keys=keys, args=args))

    async def claim_share(self, key: str, owner: str, want: int, limit: int, ttl_s: float) -> Share:
        args = [owner, int(time.time() * 1000), want, limit, _ms(ttl_s)]
        granted, owners = await self._run(key, self._scripts["claim_share"](keys=[self.key(key)], args=args))
        return Share(int(granted), int(owners))
