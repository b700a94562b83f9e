"""Open Inference Protocol bodies <-> InferRequest / InferResponse, decoded once at the edge.

Everything a request asks for becomes a typed field here (tensors, the schedule policy, the outputs
and their encoding), so no later layer reads the raw parameters again. Limits are checked against
the declared shapes before any `data` is touched, and a parameter mlserve does not honour is a 400
that names it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

import orjson
from aiohttp import web

from mlserve.config import LimitsConfig
from mlserve.errors import InvalidInput
from mlserve.server.http.json_body import parse_json_object
from mlserve.spec.infer import InferRequest, InferResponse, class_counts_from
from mlserve.server.infer_rules import (
    INPUT_PARAMETERS, OUTPUT_PARAMETERS, check_content_type, check_request_id, check_shape_limits, schedule_policy,
    unhandled_parameters,
)
from mlserve.server.tensors import check_header, decode_binary_tensor, decode_json_tensor, encode_binary, json_data

HEADER_LENGTH = "Inference-Header-Content-Length"
VERSION_HEADER = "Mlserve-Model-Version"
REQUEST_ID_HEADER = "Mlserve-Request-Id"
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded infer body: the request for the service and how the client wants outputs encoded."""

    request: InferRequest
    binary_outputs: dict[str, bool]
    default_binary: bool


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


def _decode_inputs(raw_inputs: Any, binary: memoryview, limits: LimitsConfig) -> tuple[dict, dict, list]:
    """Arrays and datatypes by input name, and each input's binary_data_size (None: JSON data)."""
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    arrays, datatypes, sizes, offset = {}, {}, [], 0
    for raw in raw_inputs:
        name, datatype, shape = check_header(raw)
        check_shape_limits(name, shape, limits)
        params = raw.get("parameters")
        if params is not None:
            where = f"input {name!r}"
            params = _parameters(params, where, INPUT_PARAMETERS)
            check_content_type(params.get("content_type"), (datatype,), where)
            size = params.get("binary_data_size")
        else:
            size = None
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
        sizes.append(size)
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data belong to no input")
    return arrays, datatypes, sizes


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
        name, params = out["name"], out.get("parameters")
        if params is None:
            binary[name] = default_binary
            continue
        params = _parameters(params, f"output {name!r}", OUTPUT_PARAMETERS)
        flag = params.get("binary_data", default_binary)
        if not isinstance(flag, bool):
            raise InvalidInput(f"output {name!r}: parameter 'binary_data' must be true or false")
        binary[name] = flag
        k = class_counts_from(name, params)
        if k is not None:
            class_counts[name] = k
    return tuple([o["name"] for o in raw]), binary, class_counts


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a binary request's JSON header says, checked once: everything but the tensors' bytes and
    the arrival time. Every input's data is in the binary part, and the header has no `id`."""

    parameters: dict[str, Any]
    default_binary: bool
    inputs: tuple[tuple[str, str, tuple[int, ...], int], ...]
    """(name, datatype, shape, binary_data_size) of each input, in the order of its bytes."""
    datatypes: dict[str, str]
    outputs: tuple[str, ...] | None
    binary_flags: dict[str, bool]
    class_counts: dict[str, int]
    extra: dict[str, Any]


class HeaderPlans:
    """Binary requests' headers, checked, by their bytes: a client sends the same header request after
    request (the same inputs, shapes and outputs), so its JSON is parsed and checked once. Headers
    with an `id` (one per request, as a rule), with an input whose data is JSON, and long ones are
    parsed every time; the memory held stays about 1 MiB."""

    MAX_PLANS = 512
    MAX_HEADER_BYTES = 2048

    def __init__(self) -> None:
        self._plans: dict[bytes, _Plan] = {}

    def get(self, header: bytes) -> _Plan | None:
        return self._plans.get(header)

    def keep(self, header: bytes, plan: _Plan) -> None:
        if len(self._plans) >= self.MAX_PLANS:
            self._plans.clear()
        self._plans[header] = plan


def decode_infer_request(
    body: bytes, header_length: str | None, model: str, version: str | None, headers: Mapping[str, str],
    limits: LimitsConfig, arrived: float | None = None, plans: HeaderPlans | None = None,
) -> Decoded:
    """Body (JSON, or JSON header + binary tensors) -> the service's InferRequest, decoded once.
    A request without an `id` gets one from the service, so feedback can refer to it. With `plans`
    (and the same `limits` every call), a binary request's header is checked once per distinct header."""
    header, binary = _split_body(body, header_length)
    arrived = time.monotonic() if arrived is None else arrived
    key = bytes(header) if plans is not None and binary and len(header) <= HeaderPlans.MAX_HEADER_BYTES else None
    plan = plans.get(key) if plans is not None and key is not None else None
    if plan is not None:
        return _planned(plan, binary, model, version, headers, limits, arrived)
    parsed = parse_json_object(header)
    req_id = check_request_id(parsed.get("id"))
    parameters = _parameters(parsed.get("parameters"), "the request", None)
    default_binary = parameters.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise InvalidInput("parameter 'binary_data_output' must be true or false")
    policy = schedule_policy(parameters, limits, arrived)
    arrays, datatypes, sizes = _decode_inputs(parsed.get("inputs"), binary, limits)
    check_content_type(parameters.get("content_type"), datatypes.values(), "the request")
    outputs, binary_flags, class_counts = _requested_outputs(parsed.get("outputs"), default_binary)
    extra = unhandled_parameters(parameters)
    if plans is not None and key is not None and req_id is None and None not in sizes:
        inputs = tuple((name, datatypes[name], arrays[name].shape, size) for name, size in zip(arrays, sizes))
        plans.keep(key, _Plan(parameters, default_binary, inputs, datatypes, outputs, binary_flags, class_counts,
                              extra))
    request = InferRequest(model, version, arrays, dict(datatypes), req_id, outputs, dict(extra), headers, policy,
                           class_counts)
    return Decoded(request, binary_flags, default_binary)


def _planned(plan: _Plan, binary: memoryview, model: str, version: str | None, headers: Mapping[str, str],
             limits: LimitsConfig, arrived: float) -> Decoded:
    """A request whose header is a known plan: only its tensors' bytes are read."""
    arrays, offset = {}, 0
    for name, datatype, shape, size in plan.inputs:
        if offset + size > len(binary):
            raise InvalidInput(f"binary_data_size {size!r} runs past the binary data ({len(binary)} bytes)")
        arrays[name] = decode_binary_tensor(name, datatype, shape, binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data belong to no input")
    policy = schedule_policy(plan.parameters, limits, arrived)
    request = InferRequest(model, version, arrays, dict(plan.datatypes), None, plan.outputs, dict(plan.extra), headers,
                           policy, plan.class_counts)
    return Decoded(request, plan.binary_flags, plan.default_binary)


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
