"""The one model.toml table parser: a TOML table into a frozen dataclass, every key's type checked
against the field's annotation and every unknown key named.

Every number is bounded, because model.toml can arrive by upload (an admin key): a field declares
its range with `between(low, high)` in its metadata; one that declares none is still held to a
finite value within int64 and a list to MAX_LIST_ITEMS items. A value out of range is refused
naming the key and the range, so no setting can ask for 100,000 threads."""

from __future__ import annotations

import math
from dataclasses import Field, fields
from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")

Converter = Callable[[Any], Any]

# Annotation (as written, `from __future__ import annotations`) -> (check, name in messages, convert).
_SCALARS: dict[str, tuple[Callable[[Any], bool], str, Converter]] = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer", int),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number", float),
    "bool": (lambda v: isinstance(v, bool), "true or false", bool),
    "str": (lambda v: isinstance(v, str), "a string", str),
}


INT64_MAX = 2**63 - 1
MAX_LIST_ITEMS = 256
"""Most items a list-valued key may hold unless its field says otherwise."""


def between(low: float, high: float) -> dict[str, Any]:
    """Field metadata: the key's value (each item, for a list) must lie in low..high."""
    return {"bounds": (low, high)}


def check_bounds(value: Any, bounds: tuple[float, float] | None, where: str) -> None:
    """A converted value (or each item of a tuple) within `bounds` (None: finite, within int64)."""
    items = value if isinstance(value, tuple) else (value,)
    if isinstance(value, tuple) and len(value) > MAX_LIST_ITEMS:
        raise ValueError(f"{where} may hold at most {MAX_LIST_ITEMS} items, got {len(value)}")
    low, high = bounds if bounds is not None else (-INT64_MAX, INT64_MAX)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{where} must be a finite number, got {item!r}")
        if not low <= item <= high:
            raise ValueError(f"{where} must lie in {_shown(low)}..{_shown(high)}, got {item!r}")


def _shown(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def check_value(kind: str, value: Any, where: str) -> Any:
    """`value` as the annotation `kind` wants it (lists become tuples); ValueError naming `where`."""
    kind = kind.removesuffix(" | None")
    if kind.startswith("tuple[") and kind.endswith(", ...]"):
        item = kind[len("tuple["):-len(", ...]")]
        check, what, convert = _scalar(item)
        if not isinstance(value, list) or not all(check(v) for v in value):
            raise ValueError(f"{where} must be a list of {item}s, got {value!r}")
        return tuple(convert(v) for v in value)
    check, what, convert = _scalar(kind)
    if not check(value):
        raise ValueError(f"{where} must be {what}, got {value!r}")
    return convert(value)


def _scalar(kind: str) -> tuple[Callable[[Any], bool], str, Converter]:
    found = _SCALARS.get(kind)
    if found is None:
        raise TypeError(f"no parser for a field annotated {kind!r}: give the key a converter")
    return found


def parse_table(
    cls: type[T], raw: Any, section: str, convert: Mapping[str, Converter] | None = None,
    given: Mapping[str, Any] | None = None,
) -> T:
    """`raw` (None = every default) as `cls`. `section` prefixes every message ("[llm]"; "" for the
    top level). `convert` parses keys whose value is not a plain scalar or list (nested tables);
    `given` supplies fields that are not read from this table. The dataclass's own checks
    (__post_init__) raise ValueError, which comes back with the section named."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{section or 'model.toml'} must be a table, got {raw!r}")
    known: dict[str, Field] = {f.name: f for f in fields(cls)  # type: ignore[arg-type]
                               if f.init and f.name not in (given or {})}
    unknown = set(raw) - set(known)
    if unknown:
        raise ValueError(_prefix(section, f"unknown key(s) {', '.join(sorted(unknown))}"))
    args = dict(given or {})
    for key, value in raw.items():
        where = f"{section} {key}".strip()
        try:
            args[key] = convert[key](value) if convert and key in convert else check_value(str(known[key].type), value, where)
        except ValueError as exc:
            raise ValueError(_prefix(section, str(exc))) from None
    try:
        parsed = cls(**args)  # the dataclass's own checks first: their messages are the more specific
        for key in raw:
            if not (convert and key in convert):
                check_bounds(args[key], known[key].metadata.get("bounds"), f"{section} {key}".strip())
    except ValueError as exc:
        raise ValueError(_prefix(section, str(exc))) from None
    return parsed


def _prefix(section: str, message: str) -> str:
    """A message that starts with "[" already names its (nested) section."""
    return message if not section or message.startswith("[") else f"{section} {message}"

