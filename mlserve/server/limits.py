"""The `[limits]` settings as an app key.

The v2 and gRPC infer paths decode their limits, priority and deadline by `server/infer_rules.py` and
the batcher enforces the deadline; the generation routes apply `default_timeout_s`; token caps are
checked where prompts are tokenized (`routing/generation/run.py`).
"""

from __future__ import annotations

from aiohttp import web

from mlserve.config import LimitsConfig

LIMITS = web.AppKey("limits", LimitsConfig)

__all__ = ["LIMITS"]
