"""Model and version names as requests give them, checked before they touch a store."""

from __future__ import annotations

from mlserve.errors import InvalidInput
from mlserve.spec import MODEL_NAME
from mlserve.spec.version import MAX_VERSION, version_number


def check_model_name(name: str) -> str:
    """A model name from a request (load, unload) before it touches a store."""
    if not MODEL_NAME.fullmatch(name) or ".." in name:
        raise InvalidInput(f"{name!r} is not a valid model name ([a-z0-9][a-z0-9_.-]*, no '..')")
    return name


def check_version_name(version: str) -> int:
    """A version from a request: a positive integer written plainly."""
    if version_number(version) is None:
        raise InvalidInput(f"{version!r} is not a valid version (a positive integer of at most "
                           f"{MAX_VERSION} in ASCII digits)")
    return int(version)
