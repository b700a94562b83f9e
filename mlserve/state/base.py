"""The StateStore: what replicas share, behind one small async interface.

Two implementations hold it: `MemoryStore` (one process, the default) and `RedisStore` (replicas
that act as one server). Callers see the same contract from both:

- versioned documents: `get` and `put` with compare-and-set (`expect`), the version rising by one
  per write; `put(expect=None)` is last writer wins; `delete` removes one;
- change notices: `publish` on a channel, `subscribe` hands each message to a callback on the loop;
- atomic counters with a TTL (`incr`), hashes of floats for statistics (`hincr`, `hgetall`,
  `hset_min`), write-once values with a TTL (`set_once`, `set_many`, `get_value`), and short leases;
- bytes with a TTL under a capped index (`set_bytes`, `get_bytes`: the shared response cache) and
  per-owner shares of a limit that expire unless renewed (`claim_share`: cluster-wide concurrency).

Every value a store hands back was checked: a key holding the wrong type or a document from another
schema raises `BadStateData` naming the key, never a crash further on. A store that cannot be reached
raises `StateUnavailable`; callers keep their last state and count locally until it is back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from mlserve.errors import ModelNotReady

SCHEMA = 1
"""Schema of every document mlserve writes; a document of another schema is refused by name."""

ONCE_TTL_S = 86400.0
"""How long a batch id given to `hincr(once=...)` is remembered."""

Handler = Callable[[str], Any]
"""Called with each message published on a subscribed channel (on the event loop)."""
HealthObserver = Callable[[bool], Any]
"""Called when the store is lost (False) or back (True)."""


class StateUnavailable(ModelNotReady):
    """The shared state store cannot be reached now."""


class BadStateData(ValueError):
    """A key in the store holds something mlserve did not write (wrong type, other schema)."""


@dataclass(frozen=True, slots=True)
class Share:
    """What `claim_share` granted this owner, and how many owners (this one included) hold a live share."""

    granted: int
    num_owners: int


@dataclass(frozen=True, slots=True)
class Document:
    """A versioned document: `version` rises by one with every write."""

    version: int
    data: dict[str, Any]


class StateStore(Protocol):
    """Shared control state; see the module docstring for the contract."""

    @property
    def is_up(self) -> bool: ...

    @property
    def is_shared(self) -> bool:
        """True when other processes see the same state (redis), False in memory."""
        ...

    def describe(self) -> str: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def on_health(self, observer: HealthObserver) -> None: ...

    async def get(self, key: str) -> Document | None: ...

    async def put(self, key: str, data: Mapping[str, Any], expect: int | None = None) -> Document | None:
        """Write `data`; with `expect`, only when the stored version is `expect` (0 = absent), else None."""
        ...

    async def delete(self, key: str) -> None:
        """Remove a document (or any value) at `key`; nothing happens when it is absent."""
        ...

    async def publish(self, channel: str, message: str) -> None: ...

    def subscribe(self, channel: str, handler: Handler) -> None:
        """Deliver every later message on `channel` to `handler` (re-subscribed after a reconnect)."""
        ...

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int: ...

    async def hincr(self, key: str, increments: Mapping[str, float], ttl_s: float | None = None,
                    once: str | None = None) -> dict[str, float]:
        """Add each increment to its field; returns the whole hash after the change (one snapshot).
        With `once` (a batch id), a batch already applied is not applied again: a retry after a lost
        reply counts nothing twice."""
        ...

    async def hgetall(self, key: str) -> dict[str, float]: ...

    async def hadd_capped(self, key: str, values: Mapping[str, float], cap: int, ttl_s: float) -> bool:
        """Set the fields unless the hash already holds `cap` or more (then nothing is written: False).
        The hash expires `ttl_s` after the write that created it. One round trip for any number of fields."""
        ...

    async def hget(self, key: str, field: str) -> float | None: ...

    async def hset_min(self, key: str, field: str, value: float) -> float:
        """Keep the smaller of the stored value and `value`; returns what is stored."""
        ...

    async def set_once(self, key: str, value: str, ttl_s: float) -> bool:
        """Set `key` unless it exists; True when this call set it."""
        ...

    async def set_many(self, values: Mapping[str, str], ttl_s: float) -> None: ...

    async def get_value(self, key: str) -> str | None: ...

    async def lease(self, key: str, owner: str, ttl_s: float) -> bool:
        """Take the lease, or renew it when `owner` holds it; False when another owner does."""
        ...

    async def release(self, key: str, owner: str) -> None: ...

    async def get_bytes(self, key: str) -> bytes | None: ...

    async def set_bytes(self, key: str, value: bytes, ttl_s: float, index: str | None = None,
                        max_entries: int = 0) -> None:
        """Keep `value` for `ttl_s`. With `index`, at most `max_entries` keys written under that index
        stay: the oldest written are dropped first."""
        ...

    async def claim_share(self, key: str, owner: str, want: int, limit: int, ttl_s: float) -> Share:
        """Set `owner`'s share of `limit` to `want`, cut to what the other owners' live shares leave.
        A share lasts `ttl_s` unless claimed again, so a dead owner's share comes back by itself."""
        ...


def check_document(key: str, raw: Any) -> dict[str, Any]:
    """A stored document's body, or BadStateData naming the key and what is wrong."""
    if not isinstance(raw, dict):
        raise BadStateData(f"state key {key!r} does not hold a JSON object")
    if raw.get("schema") != SCHEMA:
        raise BadStateData(f"state key {key!r} has schema {raw.get('schema')!r}; this mlserve reads schema {SCHEMA}")
    data = raw.get("data")
    if not isinstance(data, dict):
        raise BadStateData(f"state key {key!r} has no 'data' object")
    return data

