"""Version numbers: what a version folder's name (or a version in model.toml) may be."""

from __future__ import annotations

MAX_VERSION = 2**63 - 1
"""Largest version number: it must fit the int64 that Triton's protocols and the metrics carry."""


def parse_version(text: str) -> int | None:
    """A version folder's name as its number: ASCII digits written plainly, 1..MAX_VERSION; else None."""
    if not text.isascii() or not text.isdigit() or len(text) > len(str(MAX_VERSION)):
        return None
    number = int(text)
    return number if 1 <= number <= MAX_VERSION and str(number) == text else None
