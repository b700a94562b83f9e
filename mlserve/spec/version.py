"""Model versions as clients and folders write them: one parser for every protocol and layer."""

from __future__ import annotations

from typing import Any

from mlserve.errors import InvalidInput

MAX_VERSION = 2**63 - 1
"""Largest version number: it must fit the int64 that Triton's protocols and the metrics carry."""
MAX_VERSION_DIGITS = len(str(MAX_VERSION))
"""A longer string names no version."""


def version_number(text: Any) -> int | None:
    """The version `text` names, or None: ASCII digits written plainly (no sign, no leading zero),
    1..MAX_VERSION. (`str.isdigit` alone takes "²" and "١", which `int` then refuses.)"""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_VERSION_DIGITS or not text.isascii():
        return None
    if not text.isdigit() or text[0] == "0":
        return None
    number = int(text)
    return number if number <= MAX_VERSION else None


def parse_version(raw: Any, what: str = "version") -> int:
    """A version from a request, as a string or an integer -> int; else InvalidInput naming it."""
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 < raw <= MAX_VERSION:
        return raw
    number = version_number(raw)
    if number is None:
        shown = raw if not isinstance(raw, str) or len(raw) <= 40 else raw[:40] + "..."
        raise InvalidInput(f"{what} {shown!r} is not a version: a positive integer of at most "
                           f"{MAX_VERSION} in ASCII digits")
    return number
