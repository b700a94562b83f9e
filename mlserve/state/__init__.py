"""Control state that every replica shares: the StateStore (memory or redis) and what goes through it."""

from __future__ import annotations

from mlserve.state.base import SCHEMA, BadStateData, Document, Share, StateStore, StateUnavailable
from mlserve.state.memory import MemoryStore


def open_state(url: str, prefix: str) -> StateStore:
    """The store a `[state] url` names (checked by StateConfig): "memory" (one process) or a Redis URL."""
    if url == "memory":
        return MemoryStore()
    from mlserve.state.redis_store import RedisStore

    return RedisStore(url, prefix)


__all__ = ["SCHEMA", "BadStateData", "Document", "MemoryStore", "Share", "StateStore", "StateUnavailable", "open_state"]
