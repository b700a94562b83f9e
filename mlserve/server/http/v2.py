"""Open Inference Protocol (KServe v2) handlers: parse, call the data plane, encode."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from mlserve import __version__
from mlserve.config import LimitsConfig
from mlserve.dataplane import DataPlane, RequestCounter
from mlserve.dataplane.control import ModelControl
from mlserve.errors import MlserveError
from mlserve.monitor.metrics import Metrics
from mlserve.server.http.decode_pool import LARGE_JSON_BYTES, DecodePool
from mlserve.server.http.json_body import read_json
from mlserve.server.middleware import Gate, http_error_response, internal_error, one_pass
from mlserve.server.response import error_response, json_response
from mlserve.server.infer_rules import with_key_priority
from mlserve.server.state import ServerState
from mlserve.server.triton_config import EXTENSIONS, model_config_dict
from mlserve.server.http.v2_codec import (
    HEADER_LENGTH, Decoded, HeaderPlans, decode_infer_request, encode_infer_response,
)

log = logging.getLogger("mlserve.server")

_json = json_response


class V2Handlers:
    """The KServe v2 routes; each parses, calls the data plane, and encodes."""

    def __init__(
        self, plane: DataPlane, control: ModelControl, state: ServerState, metrics: Metrics, gate: Gate,
        limits: LimitsConfig, decode_pool: DecodePool,
    ) -> None:
        self._plane = plane
        self._infer = plane.infer  # bound once: the hot path calls the service's method itself
        self._control = control
        self._state = state
        self._metrics = metrics
        self._gate = gate
        self._limits = limits
        self._decode_pool = decode_pool
        self._count = RequestCounter(plane, metrics, "v2").count
        self._plans = HeaderPlans()

    async def live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        return _json({"ready": self._state.is_ready}, 200 if self._state.is_ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json({"name": "mlserve", "version": __version__, "extensions": EXTENSIONS})

    async def model_metadata(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version")
        metadata = self._plane.metadata(name, version)
        info = metadata.info
        return _json({
            "name": name,
            "versions": list(metadata.versions),
            "platform": info.platform,
            "inputs": [s.to_dict() for s in info.inputs],
            "outputs": [s.to_dict() for s in info.outputs],
        })

    async def model_config(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version")
        served = self._plane.pick(name, version)
        return _json(model_config_dict(name, self._plane.model(served.model), served))

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version")
        is_ready = self._plane.is_ready(name, version)
        return _json({"name": name, "ready": is_ready}, 200 if is_ready else 503)

    @one_pass
    async def infer(self, request: web.Request) -> web.Response:
        """The hot path in one coroutine: gate, decode, infer, encode, count; no middleware runs."""
        started = time.monotonic()
        name, version = request.match_info["model"], request.match_info.get("version")
        refused, key = await self._gate.enter(request)
        if refused is not None:
            self._count(name, "", refused.status, started)
            return refused
        answered_by = version or ""
        try:
            decoded = await self._decode(request, name, version, started)
            request = decoded.request if key is None else with_key_priority(decoded.request, key.priority)
            result = await self._infer(request)
            answered_by = result.version
            response = encode_infer_response(result, decoded.binary_outputs, decoded.default_binary)
        except MlserveError as exc:
            response = error_response(exc)
        except web.HTTPException as exc:  # the body was over the size limit as it was read
            response = http_error_response(exc)
        except Exception:
            response = internal_error(request)
        finally:
            self._gate.leave(key)
        self._count(name, answered_by, response.status, started)
        return response

    async def _decode(self, request: web.Request, name: str, version: str | None, arrived: float) -> Decoded:
        self._plane.model(name)  # an unknown model is a 404 before the body is read
        body = await request.read()
        header_length = request.headers.get(HEADER_LENGTH)
        json_bytes = len(body) if header_length is None else (int(header_length) if header_length.isdigit() else 0)
        if json_bytes >= LARGE_JSON_BYTES:
            return await self._decode_pool.decode(body, header_length, name, version, request.headers, arrived)
        return decode_infer_request(body, header_length, name, version, request.headers, self._limits, arrived,
                                    self._plans)

    async def repository_index(self, request: web.Request) -> web.Response:
        """Triton's index. It first runs a reconcile pass (the same as SIGHUP) unless the body says
        {"reload": false}; {"ready": true} lists only ready versions."""
        options = await read_json(request, empty_ok=True)
        if options.get("reload", True) is not False:
            await self._control.reconcile(f"api {request.remote}")
        return _json(self._plane.index(options.get("ready") is True))
