"""Open Inference Protocol (KServe v2) handlers: parse, call the service, encode."""

from __future__ import annotations

import time
from typing import Any, Mapping

import orjson
from aiohttp import web

from mlserve import __version__
from mlserve.errors import InvalidInput, MlserveError
from mlserve.monitor.metrics import Metrics
from mlserve.routing.classification import class_counts_from
from mlserve.routing.service import InferenceService, InferRequest, InferResponse
from mlserve.server.limits import admit, within_deadline
from mlserve.server.middleware import status_for
from mlserve.server.state import ServerState
from mlserve.server.tensors import decode_binary_tensor, decode_json_tensor, encode_binary, json_data
from mlserve.server.triton_config import model_config_dict

HEADER_LENGTH = "Inference-Header-Content-Length"
VERSION_HEADER = "Mlserve-Model-Version"
REQUEST_ID_HEADER = "Mlserve-Request-Id"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "model_repository", "schedule_policy",
              "statistics"]
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body, option=_JSON_OPTIONS), status=status, content_type="application/json")


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes | memoryview, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.isdigit() or int(header_length) > len(body):
        raise InvalidInput(f"{HEADER_LENGTH} {header_length!r} does not fit a body of {len(body)} bytes")
    view = memoryview(body)
    return view[: int(header_length)], view[int(header_length) :]


def _parse_json(data: bytes | memoryview) -> dict[str, Any]:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidInput("the request body must be a JSON object")
    return parsed


def _decode_inputs(raw_inputs: Any, binary: memoryview) -> tuple[dict, dict]:
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    arrays, datatypes, offset = {}, {}, 0
    for raw in raw_inputs:
        params = raw.get("parameters") if isinstance(raw, dict) else None
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInput(f"binary_data_size {size!r} runs past the binary data ({len(binary)} bytes)")
            name, datatype, array = decode_binary_tensor(raw, binary[offset : offset + size])
            offset += size
        else:
            name, datatype, array = decode_json_tensor(raw)
        if name in arrays:
            raise InvalidInput(f"input {name!r} appears twice")
        arrays[name], datatypes[name] = array, datatype
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data belong to no input")
    return arrays, datatypes


def _requested_outputs(
    raw: Any, default_binary: bool
) -> tuple[tuple[str, ...] | None, dict[str, bool], dict[str, int]]:
    if raw is None:
        return None, {}, {}
    if not isinstance(raw, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw):
        raise InvalidInput("'outputs' must be a list of objects with a name")
    binary, class_counts = {}, {}
    for out in raw:
        params = out.get("parameters") or {}
        binary[out["name"]] = bool(params.get("binary_data", default_binary)) if isinstance(params, dict) else False
        k = class_counts_from(out["name"], params) if isinstance(params, dict) else None
        if k is not None:
            class_counts[out["name"]] = k
    return tuple(o["name"] for o in raw), binary, class_counts


def decode_infer_request(
    body: bytes, header_length: str | None, model: str, version: str | None, headers: Mapping[str, str] | None = None
):
    """Body (JSON, or JSON header + binary tensors) -> InferRequest and per-output binary flags.
    A request without an `id` gets one from the service, so feedback can refer to it."""
    header, binary = _split_body(body, header_length)
    parsed = _parse_json(header)
    req_id = parsed.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise InvalidInput("'id' must be a string")
    parameters = parsed.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    arrays, datatypes = _decode_inputs(parsed.get("inputs"), binary)
    default_binary = bool(parameters.get("binary_data_output", False))
    outputs, binary_flags, class_counts = _requested_outputs(parsed.get("outputs"), default_binary)
    request = InferRequest(model, version, arrays, datatypes, req_id, outputs, parameters, headers or {}, class_counts)
    return request, binary_flags, default_binary


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


class V2Handlers:
    """The KServe v2 routes; each parses, calls the service, and encodes."""

    def __init__(self, service: InferenceService, state: ServerState, metrics: Metrics) -> None:
        self._service = service
        self._state = state
        self._metrics = metrics

    async def live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        return _json({"ready": self._state.is_ready}, 200 if self._state.is_ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json({"name": "mlserve", "version": __version__, "extensions": EXTENSIONS})

    async def model_metadata(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version")
        served = self._service.router.pick(name, version)
        info = served.info
        return _json({
            "name": name,
            "versions": [str(v) for v in self._service.router.model(name).ready_versions()],
            "platform": info.platform,
            "inputs": [s.to_dict() for s in info.inputs],
            "outputs": [s.to_dict() for s in info.outputs],
        })

    async def model_config(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version")
        served = self._service.router.pick(name, version)
        return _json(model_config_dict(name, self._service.loader.models[served.model], served))

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version")
        if version:
            is_ready = self._service.router.version(name, version).is_ready
        else:
            is_ready = bool(self._service.router.model(name).ready_versions())
        return _json({"name": name, "ready": is_ready}, 200 if is_ready else 503)

    async def infer(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        name, version = request.match_info["model"], request.match_info.get("version")
        answered_by = version or ""
        try:
            body = await request.read()
            infer_request, flags, default_binary = decode_infer_request(
                body, request.headers.get(HEADER_LENGTH), name, version, request.headers
            )
            infer_request = admit(request, infer_request)
            result = await within_deadline(request, infer_request.parameters, self._service.infer(infer_request))
            answered_by = result.version
            response = encode_infer_response(result, flags, default_binary)
        except MlserveError as exc:
            self._count(name, answered_by, status_for(exc))
            raise
        self._count(name, answered_by, 200)
        self._metrics.request_latency.labels(name, answered_by).observe(time.monotonic() - started)
        return response

    def _count(self, model: str, version: str, code: int) -> None:
        # Unknown model names would make label sets unbounded; they share one series.
        served = self._service.loader.models.get(model)
        if served is None:
            model, version = "_unknown", ""
        elif not version.isdigit() or int(version) not in served.versions:
            version = ""
        self._metrics.requests.labels(model, version, "v2", str(code)).inc()

    async def repository_index(self, request: web.Request) -> web.Response:
        """Triton's index. It first runs a reconcile pass (the same as SIGHUP) unless the body says
        {"reload": false}; {"ready": true} lists only ready versions."""
        body = await request.read()
        options = _parse_json(body) if body.strip() else {}
        loader = self._service.loader
        if options.get("reload", True) is not False:
            await loader.reconcile(f"api {request.remote}")
        rows = []
        for name, served in sorted(loader.models.items()):
            for version, sv in sorted(served.versions.items()):
                rows.append({"name": name, "version": str(version), "state": sv.state.name, "reason": sv.reason})
            if not served.versions:
                rows.append({"name": name, "state": "UNAVAILABLE", "reason": served.status_reason()})
        for name, reason in sorted(loader.scan_errors.items()):
            rows.append({"name": name, "state": "UNAVAILABLE", "reason": reason})
        if options.get("ready") is True:
            rows = [row for row in rows if row["state"] == "READY"]
        return _json(rows)
