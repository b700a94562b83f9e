"""The one model.toml table parser: a TOML table into a frozen dataclass, every key's type checked
against the field's annotation and every unknown key named."""

from __future__ import annotations

from dataclasses import fields
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
    # annotations are strings here (`from __future__ import annotations`)
    kinds: dict[str, str] = {f.name: str(f.type) for f in fields(cls)  # type: ignore[arg-type]
                             if f.init and f.name not in (given or {})}
    unknown = set(raw) - set(kinds)
    if unknown:
        raise ValueError(_prefix(section, f"unknown key(s) {', '.join(sorted(unknown))}"))
    args = dict(given or {})
    for key, value in raw.items():
        where = f"{section} {key}".strip()
        try:
            args[key] = convert[key](value) if convert and key in convert else check_value(kinds[key], value, where)
        except ValueError as exc:
            raise ValueError(_prefix(section, str(exc))) from None
    try:
        return cls(**args)
    except ValueError as exc:
        raise ValueError(_prefix(section, str(exc))) from None


def _prefix(section: str, message: str) -> str:
    """A message that starts with "[" already names its (nested) section."""
    return message if not section or message.startswith("[") else f"{section} {message}"

