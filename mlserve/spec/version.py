"""Model versions as clients and folders write them: one parser for every protocol and layer."""

from __future__ import annotations

from typing import Any

from mlserve.errors import InvalidInput

MAX_VERSION_DIGITS = 18
"""A version has at most this many digits (it fits an int64; a longer string names no version)."""


def version_number(text: Any) -> int | None:
    """The version `text` names, or None: 1 to MAX_VERSION_DIGITS ASCII digits, no sign, no leading
    zero. (`str.isdigit` alone takes "²" and "١", which `int` then refuses with a ValueError.)"""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_VERSION_DIGITS or not text.isascii():
        return None
    if not text.isdigit() or text[0] == "0":
        return None
    return int(text)


def parse_version(raw: Any, what: str = "version") -> int:
    """A version from a request, as a string or an integer -> int; else InvalidInput naming it."""
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 < raw < 10**MAX_VERSION_DIGITS:
        return raw
    number = version_number(raw)
    if number is None:
        shown = raw if not isinstance(raw, str) or len(raw) <= 40 else raw[:40] + "..."
        raise InvalidInput(f"{what} {shown!r} is not a version: a positive integer of at most "
                           f"{MAX_VERSION_DIGITS} ASCII digits")
    return number
