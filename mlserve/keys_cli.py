"""`mlserve keys create|list|revoke`: the command-line face of mlserve/keys.py."""

from __future__ import annotations

import argparse
import sys

from mlserve import keys


def run_keys(args: argparse.Namespace) -> int:
    try:
        if args.action == "create":
            scopes = tuple(s.strip() for s in args.scopes.split(",") if s.strip())
            token = keys.create_key(args.file, args.name, scopes, args.rps, args.concurrency, args.priority,
                                    args.quota, args.quota_period)
            print(token)
            print(f"key {args.name!r} added to {args.file}; the key above is shown only once", file=sys.stderr)
        elif args.action == "list":
            for key in keys.read_keys(args.file).values():
                row = keys.describe(key)
                print("  ".join(f"{k}={v}" for k, v in row.items()))
        elif args.action == "revoke":
            key = keys.revoke_key(args.file, args.key)
            print(f"revoked key {key.name!r} ({key.key_id}); send SIGHUP to running servers", file=sys.stderr)
        return 0
    except (ValueError, OSError) as exc:
        print(f"mlserve keys: {exc}", file=sys.stderr)
        return 2
