"""Limits of the generation routes: token caps and a deadline around the service call.

The v2 infer path decodes its limits, priority and deadline in `server/v2_codec.py` and the
batcher enforces the deadline; generation requests run under `within_deadline`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, TypeVar

from aiohttp import web

from mlserve.config import LimitsConfig
from mlserve.errors import InvalidInput, PayloadTooLarge, RequestTimeout

LIMITS = web.AppKey("limits", LimitsConfig)
T = TypeVar("T")


def _limits(request: web.Request) -> LimitsConfig:
    return request.app.get(LIMITS) or LimitsConfig()


def check_token_limits(num_prompt_tokens: int, max_new_tokens: int, limits: LimitsConfig) -> None:
    """For generation routes: prompt length and requested tokens against the configured caps."""
    if num_prompt_tokens > limits.max_prompt_tokens:
        raise PayloadTooLarge(f"prompt has {num_prompt_tokens} tokens, over the limit of {limits.max_prompt_tokens}")
    if max_new_tokens > limits.max_generation_tokens:
        raise InvalidInput(f"max_tokens {max_new_tokens} is over the limit of {limits.max_generation_tokens}")


def timeout_s(parameters: dict[str, Any], limits: LimitsConfig) -> float | None:
    """The request's deadline in seconds: its `timeout` parameter (microseconds), else the default."""
    raw = parameters.get("timeout")
    if raw is None:
        return limits.default_timeout_s or None
    if not isinstance(raw, int) or isinstance(raw, bool) or raw <= 0:
        raise InvalidInput(f"parameter 'timeout' must be a positive integer of microseconds, got {raw!r}")
    return raw / 1e6


async def within_deadline(request: web.Request, parameters: dict[str, Any], call: Coroutine[Any, Any, T]) -> T:
    """Await the service call under the request's deadline; past it the request leaves the queue
    (its cancelled future is skipped by the batcher) and the client gets 504."""
    try:
        seconds = timeout_s(parameters, _limits(request))
    except InvalidInput:
        call.close()
        raise
    if seconds is None:
        return await call
    try:
        async with asyncio.timeout(seconds):
            return await call
    except TimeoutError:
        raise RequestTimeout(f"timeout: the request's deadline of {_fmt(seconds)} passed before it was answered") from None


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


__all__ = ["LIMITS", "check_token_limits", "timeout_s", "within_deadline"]
