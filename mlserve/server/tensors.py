"""Wire <-> numpy for the Open Inference Protocol: JSON tensors and the binary tensor data extension."""

from __future__ import annotations

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


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers, got {raw!r}")
    # numpy refuses shapes whose non-zero dimensions overflow, even when a zero makes them empty.
    if math.prod(d for d in raw if d) > _MAX_SHAPE_SPAN:
        raise InvalidInput(f"input {name!r}: shape {raw!r} is too large")
    return tuple(raw)


def _tensor_header(raw: Any) -> tuple[str, str, tuple[int, ...]]:
    if not isinstance(raw, dict):
        raise InvalidInput(f"each input must be an object with name, shape, datatype and data, got {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("an input has no name")
    datatype = raw.get("datatype")
    if datatype not in DATATYPE_TO_NUMPY:
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}; one of {', '.join(DATATYPE_TO_NUMPY)}")
    return name, datatype, _shape(raw.get("shape"), name)


def _check_count(name: str, count: int, shape: tuple[int, ...]) -> None:
    expected = math.prod(shape)
    if count != expected:
        raise InvalidInput(f"input {name!r}: {count} values do not fill shape {list(shape)} ({expected} values)")


def _json_bytes(name: str, data: list, shape: tuple[int, ...]) -> np.ndarray:
    flat = np.array(data, dtype=object).ravel() if data else np.empty(0, dtype=object)
    _check_count(name, flat.size, shape)
    out = np.empty(flat.size, dtype=object)
    for i, value in enumerate(flat):
        if isinstance(value, str):
            out[i] = value.encode("utf-8")
        elif isinstance(value, (bytes, bytearray)):
            out[i] = bytes(value)
        else:
            raise InvalidInput(f"input {name!r}: BYTES data must be strings, got {type(value).__name__}")
    return out.reshape(shape)


def _json_numeric(name: str, datatype: str, data: list, shape: tuple[int, ...]) -> np.ndarray:
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


def decode_json_tensor(raw: Any) -> tuple[str, str, np.ndarray]:
    """A v2 JSON input (flat or nested data) -> (name, datatype, array of the given shape)."""
    name, datatype, shape = _tensor_header(raw)
    data = raw.get("data")
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: data must be a list")
    if datatype == "BYTES":
        return name, datatype, _json_bytes(name, data, shape)
    return name, datatype, _json_numeric(name, datatype, data, shape)


def decode_binary_tensor(raw: Any, chunk: memoryview) -> tuple[str, str, np.ndarray]:
    """A v2 input whose data came in the binary part: no copy for fixed-size types."""
    name, datatype, shape = _tensor_header(raw)
    if datatype == "BYTES":
        return name, datatype, deserialize_bytes(name, chunk, shape)
    dtype = np.dtype(DATATYPE_TO_NUMPY[datatype])
    if len(chunk) != math.prod(shape) * dtype.itemsize:
        raise InvalidInput(
            f"input {name!r}: {len(chunk)} binary bytes do not fill shape {list(shape)} of {datatype} "
            f"({math.prod(shape) * dtype.itemsize} bytes)"
        )
    return name, datatype, np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).reshape(shape)


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
