"""`mlserve keys create|list|revoke`: the command-line face of mlserve/keys.py."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from mlserve import keys
from mlserve.config import StateConfig, load_config
from mlserve.state import BadStateData, StateUnavailable, open_state
from mlserve.state.budget import window_of


def run_keys(args: argparse.Namespace) -> int:
    try:
        if args.action == "create":
            scopes = tuple(s.strip() for s in args.scopes.split(",") if s.strip())
            token = keys.create_key(args.file, args.name, scopes, args.rps, args.concurrency, args.priority,
                                    args.quota, args.quota_period, args.token_quota)
            print(token)
            print(f"key {args.name!r} added to {args.file}; the key above is shown only once", file=sys.stderr)
        elif args.action == "list":
            listed = list(keys.read_keys(args.file).values())
            usage = quota_usage(args, listed)
            for key in listed:
                row = keys.describe(key)
                if usage is not None and key.quota:
                    row["quota_used"] = usage.get(f"quota:{key.key_id}", "?")
                if usage is not None and key.token_quota:
                    row["token_quota_used"] = usage.get(f"tokens:{key.key_id}", "?")
                print("  ".join(f"{k}={v}" for k, v in row.items()))
        elif args.action == "revoke":
            key = keys.revoke_key(args.file, args.key)
            print(f"revoked key {key.name!r} ({key.key_id}); send SIGHUP to running servers", file=sys.stderr)
        return 0
    except (ValueError, OSError) as exc:
        print(f"mlserve keys: {exc}", file=sys.stderr)
        return 2


def quota_usage(args: argparse.Namespace, listed: list[keys.ApiKey]) -> dict[str, int] | None:
    """Each quota's use (by "quota:<key id>" and "tokens:<key id>") in its current UTC day or month, read from the shared state store that
    `--state` (or mlserve.toml's [state] url, or MLSERVE_STATE_URL) names; None with no shared store
    (one server counts in its own memory: read its /metrics)."""
    state = load_config(getattr(args, "config", None), overrides={"state": {"url": getattr(args, "state", None)}}).state
    if state.url == "memory" or not any(key.quota or key.token_quota for key in listed):
        return None
    try:
        return asyncio.run(_read_usage(state, listed))
    except (StateUnavailable, BadStateData, ValueError) as exc:
        print(f"mlserve keys: quota use not shown: {exc}", file=sys.stderr)
        return None


async def _read_usage(state: StateConfig, listed: list[keys.ApiKey]) -> dict[str, int]:
    """The blocks the replicas leased in the current window (budget.py): what `/metrics` shows as
    mlserve_key_quota_used, at most one unspent block per replica above the requests served."""
    store = open_state(state.url, state.prefix)
    try:
        usage = {}
        window = {period: window_of(period, time.time()) for period in ("day", "month")}
        for key in listed:
            for kind, limit in (("quota", key.quota), ("tokens", key.token_quota)):
                if limit:
                    raw = await store.get_value(f"budget:{kind}:{key.key_id}:{window[key.quota_period]}")
                    usage[f"{kind}:{key.key_id}"] = min(limit, int(raw)) if raw is not None else 0
        return usage
    finally:
        await store.close()
