"""The `[limits]` settings as an app key, and the deadline the generation routes apply.

The v2 and gRPC infer paths decode their limits, priority and deadline in `server/v2_codec.py` and
the batcher enforces the deadline; token caps are checked where prompts are tokenized
(`routing/generation/run.py`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mlserve.config import LimitsConfig
from mlserve.errors import InvalidInput

LIMITS = web.AppKey("limits", LimitsConfig)


def timeout_s(parameters: dict[str, Any], limits: LimitsConfig) -> float | None:
    """The request's deadline in seconds: its `timeout` parameter (microseconds), else the default."""
    raw = parameters.get("timeout")
    if raw is None:
        return limits.default_timeout_s or None
    if not isinstance(raw, int) or isinstance(raw, bool) or raw <= 0:
        raise InvalidInput(f"parameter 'timeout' must be a positive integer of microseconds, got {raw!r}")
    return raw / 1e6


__all__ = ["LIMITS", "timeout_s"]
