"""Weighted splits and sticky assignment: buckets and the version a
bucket falls in.

A user's key is hashed with a per-model salt into one of 10,000 buckets (as Statsig and Optimizely
do). Versions own contiguous bucket ranges in a fixed order (ascending version number), so when
weights change only the buckets between the old and the new boundary change hands: a user keeps
their version while a 90/10 split ramps to 50/50 unless their bucket crossed. Requests without a
key draw a bucket at random, which is a weighted random choice.
"""

from __future__ import annotations

import hashlib
import random

NUM_BUCKETS = 10_000


def bucket_of(key: str, salt: str) -> int:
    """The key's bucket in 0..9999: stable across processes and restarts (not Python's hash())."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % NUM_BUCKETS


def boundaries(weights: tuple[tuple[int, float], ...]) -> list[tuple[int, int]]:
    """(version, first bucket past its range), in version order; empty ranges kept for stability."""
    total = sum(w for _, w in weights)
    out, cumulative = [], 0.0
    for version, weight in weights:
        cumulative += weight
        out.append((version, round(cumulative / total * NUM_BUCKETS)))
    return out


def version_for_bucket(weights: tuple[tuple[int, float], ...], bucket: int) -> int:
    for version, end in boundaries(weights):
        if bucket < end:
            return version
    return weights[-1][0]


def assign(weights: tuple[tuple[int, float], ...], key: str | None, salt: str, rng: random.Random | None = None) -> int:
    """The version for this key (sticky), or a weighted random version when there is no key."""
    bucket = bucket_of(key, salt) if key is not None else (rng or random).randrange(NUM_BUCKETS)
    return version_for_bucket(weights, bucket)
