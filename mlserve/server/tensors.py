"""Wire <-> numpy for the Open Inference Protocol: JSON tensors and the binary tensor data extension."""

from __future__ import annotations

import itertools
import math
import struct
from typing import Any

import numpy as np

from mlserve.errors import InvalidInput
from mlserve.spec import DATATYPE_TO_NUMPY

# What numpy kinds each datatype accepts from JSON: ints may not come as floats or booleans.
_ACCEPTED_KINDS = {"BOOL": "b", "FP16": "iuf", "FP32": "iuf", "FP64": "iuf"}
_INT_KINDS = "iu"
_MAX_SHAPE_SPAN = 2**48


MAX_DIMS = 64

_WIRE_DTYPES = {datatype: np.dtype(name).newbyteorder("<") for datatype, name in DATATYPE_TO_NUMPY.items()
                if datatype != "BYTES"}
"""The little-endian dtype each fixed-size datatype has on the wire, built once instead of per tensor."""


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list):
        raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers, got {raw!r}")
    for dim in raw:  # a plain loop: every input of every request passes here
        if type(dim) is not int or dim < 0:
            raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers, got {raw!r}")
    if len(raw) > MAX_DIMS:
        raise InvalidInput(f"input {name!r}: shape has {len(raw)} dimensions, more than {MAX_DIMS}")
    # numpy refuses shapes whose non-zero dimensions overflow, even when a zero makes them empty.
    if math.prod(d for d in raw if d) > _MAX_SHAPE_SPAN:
        raise InvalidInput(f"input {name!r}: shape {raw!r} is too large")
    return tuple(raw)


def check_header(raw: Any) -> tuple[str, str, tuple[int, ...]]:
    """An input's name, datatype and shape, checked before its data is looked at."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"each input must be an object with name, shape, datatype and data, got {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("an input has no name")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPE_TO_NUMPY:
        shown = datatype if isinstance(datatype, str) else type(datatype).__name__
        raise InvalidInput(f"input {name!r}: unknown datatype {shown!r}; one of {', '.join(DATATYPE_TO_NUMPY)}")
    return name, datatype, _shape(raw.get("shape"), name)


def _check_count(name: str, count: int, shape: tuple[int, ...]) -> None:
    expected = math.prod(shape)
    if count != expected:
        raise InvalidInput(f"input {name!r}: {count} values do not fill shape {list(shape)} ({expected} values)")


def _json_bytes(name: str, data: list, shape: tuple[int, ...]) -> np.ndarray:
    """Strings (flat or nested) -> an object array of UTF-8 bytes; one pass, no per-element branches
    unless something other than a string is found."""
    flat = data if all(type(v) is str for v in data) else _flatten_strings(name, data)
    _check_count(name, len(flat), shape)
    out = np.empty(len(flat), dtype=object)
    out[:] = [v.encode("utf-8") for v in flat]
    return out.reshape(shape)


def _flatten_strings(name: str, data: list) -> list[str]:
    flat: list[str] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if type(value) is str:
                flat.append(value)
            elif isinstance(value, list):
                stack.append(iter(value))
                break
            else:
                raise InvalidInput(f"input {name!r}: BYTES data must be strings, got {type(value).__name__}")
        else:
            stack.pop()
    return flat


_PACKED = {float: ("d", np.float64), int: ("q", np.int64)}
"""A flat list whose first value is a float is packed as doubles, one whose first is an int as int64s."""


def _packed(data: list) -> np.ndarray | None:
    """A flat list of numbers, or a list of equally long flat rows, read in one C pass (struct packs
    the values into a numpy buffer: a quarter of np.array's time on a list of floats); None where
    np.array must judge (deeper nesting, ragged rows, booleans, strings, nulls, an int where a list of
    ints must hold int64s). Values come out as np.array reads them, with one difference on purpose: an
    integer beyond 64 bits among floats is read as a float, where np.array made the list mixed."""
    row = data[0]
    if type(row) is list:
        width = len(row)
        if not width or not all(type(r) is list and len(r) == width for r in data):
            return None
        values: Any = itertools.chain.from_iterable(data)
        first, count = type(row[0]), width * len(data)
    else:
        values, first, count = data, type(row), len(data)
    packing = _PACKED.get(first)
    if packing is None:
        return None
    code, dtype = packing
    out = np.empty(count, dtype=dtype)
    try:
        struct.pack_into(f"{count}{code}", out, 0, *values)
    except (struct.error, OverflowError):
        return None
    return out


def _json_numeric(name: str, datatype: str, data: list, shape: tuple[int, ...]) -> np.ndarray:
    parsed = _packed(data) if data else None
    if parsed is None:
        try:
            parsed = np.array(data)
        except ValueError as exc:
            raise InvalidInput(f"input {name!r}: data is not a regular nested list of numbers ({exc})") from None
    if parsed.size == 0:
        parsed = parsed.astype(DATATYPE_TO_NUMPY[datatype])
    elif datatype == "UINT64" and parsed.dtype.kind in "fO":
        parsed = _big_unsigned(name, data)
    accepted = _ACCEPTED_KINDS.get(datatype, _INT_KINDS)
    if parsed.dtype.kind not in accepted:
        got = {"b": "booleans", "f": "floats", "i": "integers", "u": "integers", "U": "strings", "O": "mixed values"}
        raise InvalidInput(f"input {name!r}: {datatype} data cannot hold {got.get(parsed.dtype.kind, parsed.dtype)}")
    target = np.dtype(DATATYPE_TO_NUMPY[datatype])
    if target.kind in _INT_KINDS and parsed.size:
        limits = np.iinfo(target)
        if parsed.min() < limits.min or parsed.max() > limits.max:
            raise InvalidInput(f"input {name!r}: a value is out of range for {datatype}")
    _check_count(name, parsed.size, shape)
    return parsed.astype(target, copy=False).reshape(shape)


def _big_unsigned(name: str, data: list) -> np.ndarray:
    """Integers past INT64's range make numpy guess float; UINT64 must keep them exact."""
    values = np.array(data, dtype=object)
    if not all(type(v) is int for v in values.flat):
        raise InvalidInput(f"input {name!r}: UINT64 data must be integers")
    try:
        return values.astype(np.uint64)
    except OverflowError:
        raise InvalidInput(f"input {name!r}: a value is out of range for UINT64") from None


def decode_json_tensor(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """A v2 JSON input's data (flat or nested) -> an array of the given shape."""
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: data must be a list")
    if datatype == "BYTES":
        return _json_bytes(name, data, shape)
    return _json_numeric(name, datatype, data, shape)


def decode_binary_tensor(name: str, datatype: str, shape: tuple[int, ...], chunk: memoryview) -> np.ndarray:
    """A v2 input whose data came in the binary part: no copy for fixed-size types."""
    if datatype == "BYTES":
        return deserialize_bytes(name, chunk, shape)
    dtype = _WIRE_DTYPES[datatype]
    expected = math.prod(shape) * dtype.itemsize
    if len(chunk) != expected:
        raise InvalidInput(
            f"input {name!r}: {len(chunk)} binary bytes do not fill shape {list(shape)} of {datatype} "
            f"({expected} bytes)"
        )
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def deserialize_bytes(name: str, chunk: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    """Binary BYTES: each element is a 4-byte little-endian length, then that many bytes."""
    items = []
    offset, end = 0, len(chunk)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput(f"input {name!r}: BYTES element length is cut off")
        (length,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(f"input {name!r}: BYTES element runs past the end of its data")
        items.append(bytes(chunk[offset : offset + length]))
        offset += length
    _check_count(name, len(items), shape)
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)


def serialize_bytes(array: np.ndarray) -> bytes:
    parts = []
    for value in array.ravel():
        data = value if isinstance(value, bytes) else str(value).encode("utf-8")
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def encode_binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes(array)
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def json_data(array: np.ndarray, datatype: str) -> Any:
    """Flat data for a JSON output; numeric arrays go to orjson as numpy (it serializes them natively)."""
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.ravel()]
    return np.ascontiguousarray(array).ravel()
