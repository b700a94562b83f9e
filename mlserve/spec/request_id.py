"""Request ids a client may choose (the v2 `id`, the X-Request-Id header): short, printable, bounded.

Imports nothing but errors, so every layer may check an id where it first meets one.
"""

from __future__ import annotations

from mlserve.errors import InvalidInput

MAX_REQUEST_ID_CHARS = 128
"""Longest client-chosen request id; ids are echoed in a header and kept for feedback."""


def check_request_id(value: object) -> str:
    """The id unchanged when it is a string of 1..128 printable ASCII characters (space included,
    no control character), else InvalidInput saying what is wrong."""
    if not isinstance(value, str):
        raise InvalidInput(f"request id must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidInput("request id must not be empty")
    if len(value) > MAX_REQUEST_ID_CHARS:
        raise InvalidInput(f"request id has {len(value)} characters; at most {MAX_REQUEST_ID_CHARS} are allowed")
    if not is_request_id(value):
        raise InvalidInput("request id must be printable ASCII, without control characters")
    return value


def is_request_id(value: str) -> bool:
    """Cheap test for code that keeps ids: 1..128 printable ASCII characters."""
    return 0 < len(value) <= MAX_REQUEST_ID_CHARS and value.isascii() and value.isprintable()
