"""Open Inference Protocol bodies <-> InferRequest / InferResponse, decoded once at the edge.

Everything a request asks for becomes a typed field here (tensors, the schedule policy, the outputs
and their encoding), so no later layer reads the raw parameters again. Limits are checked against
the declared shapes before any `data` is touched, and a parameter mlserve does not honour is a 400
that names it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import orjson
from aiohttp import web

from mlserve.config import LimitsConfig
from mlserve.errors import InvalidInput, PayloadTooLarge
from mlserve.routing.classification import class_counts_from
from mlserve.routing.service import InferRequest, InferResponse
from mlserve.spec import SchedulePolicy
from mlserve.spec.request_id import check_request_id as check_id
from mlserve.server.json_body import parse_json_object
from mlserve.server.tensors import check_header, decode_binary_tensor, decode_json_tensor, encode_binary, json_data

HEADER_LENGTH = "Inference-Header-Content-Length"
VERSION_HEADER = "Mlserve-Model-Version"
REQUEST_ID_HEADER = "Mlserve-Request-Id"
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY

# Parameters mlserve honours, by where they stand in the request. Others are refused by name; a
# request's other parameters go on to the service, which allows only the routed model's sticky key.
REQUEST_PARAMETERS = frozenset({"priority", "timeout", "binary_data_output", "content_type"})
INPUT_PARAMETERS = frozenset({"binary_data_size", "content_type"})
OUTPUT_PARAMETERS = frozenset({"binary_data", "classification"})


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded infer body: the request for the service and how the client wants outputs encoded."""

    request: InferRequest
    binary_outputs: dict[str, bool]
    default_binary: bool


def check_request_id(value: Any) -> str | None:
    """A client's request id (None when it sent none): see `mlserve.spec.request_id`."""
    return None if value is None else check_id(value)


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes | memoryview, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.isdigit() or int(header_length) > len(body):
        raise InvalidInput(f"{HEADER_LENGTH} {header_length!r} does not fit a body of {len(body)} bytes")
    view = memoryview(body)
    return view[: int(header_length)], view[int(header_length) :]


def _parameters(raw: Any, where: str, allowed: frozenset[str] | None) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"'parameters' of {where} must be an object")
    if allowed is None:
        return raw
    unknown = [name for name in raw if name not in allowed]
    if unknown:
        raise InvalidInput(f"{where}: parameter(s) {sorted(unknown)} are not supported by mlserve")
    return raw


def check_content_type(value: Any, datatypes: Iterable[str], where: str) -> None:
    """`content_type`, which MLServer's and KServe's codecs send, is taken where it names what
    mlserve does anyway: "np" (the tensor as it is) and "str" on BYTES (UTF-8 text). Any other value
    asks for a decoding mlserve does not do (it decodes by datatype) and is refused by name."""
    if value is None or value == "np" or (value == "str" and all(d == "BYTES" for d in datatypes)):
        return
    raise InvalidInput(f"{where}: content_type {value!r} is not supported (\"np\", or \"str\" on BYTES tensors)")


def _non_negative_int(parameters: dict[str, Any], name: str) -> int | None:
    value = parameters.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"parameter {name!r} must be a non-negative integer, got {value!r}")
    return value


def schedule_policy(
    parameters: dict[str, Any], limits: LimitsConfig, arrived: float, max_seconds: float | None = None
) -> SchedulePolicy:
    """Triton's schedule policy, decoded once: `priority` (1 = highest) and `timeout` (microseconds,
    from arrival to answer); without a timeout the server's default deadline applies. `max_seconds`
    caps it further (a gRPC call's own deadline)."""
    priority = _non_negative_int(parameters, "priority")
    timeout = parameters.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0):
        raise InvalidInput(f"parameter 'timeout' must be a positive integer of microseconds, got {timeout!r}")
    seconds = timeout / 1e6 if timeout is not None else (limits.default_timeout_s or None)
    if max_seconds is not None:
        seconds = max_seconds if seconds is None else min(seconds, max_seconds)
    return SchedulePolicy(priority, None, arrived + seconds if seconds is not None else None)


def unhandled_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The request parameters left for the service once the schedule policy took its own."""
    if not parameters:
        return parameters
    return {k: v for k, v in parameters.items() if k not in REQUEST_PARAMETERS}


def _decode_inputs(raw_inputs: Any, binary: memoryview, limits: LimitsConfig) -> tuple[dict, dict]:
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    arrays, datatypes, offset = {}, {}, 0
    for raw in raw_inputs:
        name, datatype, shape = check_header(raw)
        check_shape_limits(name, shape, limits)
        params = _parameters(raw.get("parameters"), f"input {name!r}", INPUT_PARAMETERS)
        check_content_type(params.get("content_type"), (datatype,), f"input {name!r}")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise InvalidInput(f"binary_data_size {size!r} runs past the binary data ({len(binary)} bytes)")
            array = decode_binary_tensor(name, datatype, shape, binary[offset : offset + size])
            offset += size
        else:
            array = decode_json_tensor(name, datatype, shape, raw.get("data"))
        if name in arrays:
            raise InvalidInput(f"input {name!r} appears twice")
        arrays[name], datatypes[name] = array, datatype
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data belong to no input")
    return arrays, datatypes


MAX_DIMS = 32
"""Most dimensions a tensor may have (numpy's own limit is 64; no served model takes more than a few)."""


def check_shape_limits(name: str, shape: tuple[int, ...], limits: LimitsConfig) -> None:
    """From the declared shape alone, before any data is decoded."""
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"input {name!r} has {len(shape)} dimensions, over the limit of {MAX_DIMS}")
    count = 1
    for dim in shape:
        count *= dim
    if count > limits.max_tensor_elements:
        raise PayloadTooLarge(f"input {name!r} has {count} elements, over the limit of {limits.max_tensor_elements}")
    if shape and shape[0] > limits.max_batch_rows:
        raise PayloadTooLarge(f"input {name!r} has {shape[0]} rows, over the limit of {limits.max_batch_rows}")


def _requested_outputs(
    raw: Any, default_binary: bool
) -> tuple[tuple[str, ...] | None, dict[str, bool], dict[str, int]]:
    """Names, binary flags and `classification` top-k counts of the requested outputs."""
    if raw is None:
        return None, {}, {}
    if not isinstance(raw, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw):
        raise InvalidInput("'outputs' must be a list of objects with a name")
    binary, class_counts = {}, {}
    for out in raw:
        params = _parameters(out.get("parameters"), f"output {out['name']!r}", OUTPUT_PARAMETERS)
        flag = params.get("binary_data", default_binary)
        if not isinstance(flag, bool):
            raise InvalidInput(f"output {out['name']!r}: parameter 'binary_data' must be true or false")
        binary[out["name"]] = flag
        k = class_counts_from(out["name"], params)
        if k is not None:
            class_counts[out["name"]] = k
    return tuple(o["name"] for o in raw), binary, class_counts


def decode_infer_request(
    body: bytes, header_length: str | None, model: str, version: str | None, headers: Mapping[str, str],
    limits: LimitsConfig, arrived: float | None = None,
) -> Decoded:
    """Body (JSON, or JSON header + binary tensors) -> the service's InferRequest, decoded once.
    A request without an `id` gets one from the service, so feedback can refer to it."""
    header, binary = _split_body(body, header_length)
    parsed = parse_json_object(header)
    req_id = check_request_id(parsed.get("id"))
    parameters = _parameters(parsed.get("parameters"), "the request", None)
    default_binary = parameters.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise InvalidInput("parameter 'binary_data_output' must be true or false")
    policy = schedule_policy(parameters, limits, time.monotonic() if arrived is None else arrived)
    arrays, datatypes = _decode_inputs(parsed.get("inputs"), binary, limits)
    check_content_type(parameters.get("content_type"), datatypes.values(), "the request")
    outputs, binary_flags, class_counts = _requested_outputs(parsed.get("outputs"), default_binary)
    extra = unhandled_parameters(parameters)
    request = InferRequest(model, version, arrays, datatypes, req_id, outputs, extra, headers, policy, class_counts)
    return Decoded(request, binary_flags, default_binary)


def with_key_priority(decoded: Decoded, key_priority: int | None) -> Decoded:
    """The request with its API key's priority when the client named none."""
    if key_priority is None or decoded.request.policy.priority is not None:
        return decoded
    policy = dataclasses.replace(decoded.request.policy, priority=key_priority)
    return dataclasses.replace(decoded, request=dataclasses.replace(decoded.request, policy=policy))


def encode_infer_response(response: InferResponse, binary_flags: dict[str, bool], default_binary: bool) -> web.Response:
    outputs, blobs = [], []
    for name, array in response.outputs.items():
        datatype = response.datatypes[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary_flags.get(name, default_binary):
            blob = encode_binary(array, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = json_data(array, datatype)
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": response.model, "model_version": response.version, "outputs": outputs}
    if response.req_id is not None:
        body["id"] = response.req_id
    header = orjson.dumps(body, option=_JSON_OPTIONS)
    headers = {VERSION_HEADER: response.version}
    if response.req_id is not None:
        headers[REQUEST_ID_HEADER] = response.req_id
    if not blobs:
        return web.Response(body=header, content_type="application/json", headers=headers)
    headers[HEADER_LENGTH] = str(len(header))
    return web.Response(body=b"".join([header, *blobs]), content_type="application/octet-stream", headers=headers)
