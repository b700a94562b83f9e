"""KServe v2 / Triton GRPCInferenceService on grpcio's asyncio server, on the HTTP server's event loop.

Every RPC passes the same gate as HTTP (grpc/gate.py), every call goes through the same data plane
as HTTP's (`DataPlane.infer` for inference), and errors leave with their gRPC code in `errors.ERROR_TABLE`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from typing import AsyncIterator, Awaitable, Callable

import grpc
from multidict import CIMultiDict, CIMultiDictProxy

from mlserve import __version__, errors
from mlserve.config import Config, LimitsConfig
from mlserve.keys import ApiKey
from mlserve.monitor.metrics import Metrics
from mlserve.dataplane import DataPlane, RequestCounter
from mlserve.dataplane.control import ModelControl
from mlserve.server.grpc import codec as grpc_codec
from mlserve.server.grpc.codec import statistics_message
from mlserve.server.grpc.gate import (HEALTH_PATH, MODEL_PATH, RPC_PATHS, Malformed, MalformedRequests, Refused,
                                      admit, admitted, authorize, malformed_message, release)
from mlserve.server.proto import grpc_service_pb2 as pb
from mlserve.server.proto import grpc_service_pb2_grpc as pb_grpc
from mlserve.server.grpc.repository import RepositoryCalls
from mlserve.server.middleware import Gate, status_for
from mlserve.server.state import ServerState
from mlserve.server.infer_rules import with_key_priority
from mlserve.server.triton_config import EXTENSIONS, model_config_message

log = logging.getLogger("mlserve.grpc")


def grpc_code(exc: errors.MlserveError) -> grpc.StatusCode:
    return grpc.StatusCode[errors.kind_of(exc).grpc_code]


def _headers(context: grpc.aio.ServicerContext) -> CIMultiDictProxy[str]:
    """The call's text metadata, case-insensitive like HTTP headers (for header-based sticky keys)."""
    metadata = context.invocation_metadata() or ()
    return CIMultiDictProxy(CIMultiDict((k, v) for k, v in metadata if isinstance(v, str)))


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str,
                 retry_after_s: float | None = None) -> None:
    trailing = (("retry-after", str(round(retry_after_s))),) if retry_after_s else ()
    await context.abort(code, message, trailing_metadata=trailing)


def _unsupported(what: str):
    """An RPC mlserve does not serve: UNIMPLEMENTED, quietly (the generated base class raises
    NotImplementedError, which grpcio logs as an error with a traceback on every call)."""

    async def rpc(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not supported by mlserve")

    return rpc


class UnsupportedCalls:
    """Triton's RPCs that mlserve does not implement (shared memory, trace and log settings)."""

    SystemSharedMemoryStatus = _unsupported("system shared memory")
    SystemSharedMemoryRegister = _unsupported("system shared memory")
    SystemSharedMemoryUnregister = _unsupported("system shared memory")
    CudaSharedMemoryStatus = _unsupported("CUDA shared memory")
    CudaSharedMemoryRegister = _unsupported("CUDA shared memory")
    CudaSharedMemoryUnregister = _unsupported("CUDA shared memory")
    TraceSetting = _unsupported("trace setting")
    LogSettings = _unsupported("log settings")


class InferenceServicer(RepositoryCalls, UnsupportedCalls, pb_grpc.GRPCInferenceServiceServicer):
    """The RPCs: each passes the gate, parses, calls the data plane, and encodes."""

    def __init__(self, plane: DataPlane, control: ModelControl, state: ServerState, metrics: Metrics, gate: Gate,
                 limits: LimitsConfig) -> None:
        self.plane = plane
        self.control = control
        self._infer_call = plane.infer  # bound once: the hot path calls the service's method itself
        self._state = state
        self._metrics = metrics
        self._count = RequestCounter(plane, metrics, "grpc").count
        self._gate = gate
        self._limits = limits

    async def _call(self, context: grpc.aio.ServicerContext, rpc: str, work: Callable[[ApiKey | None], Awaitable]):
        """Gate `rpc` as its HTTP path, run, map errors. Anything unexpected is logged once, naming
        the RPC, and becomes INTERNAL."""
        path = RPC_PATHS[rpc]
        try:
            key = await authorize(self._gate, path, _metadata(context, "authorization"), context.peer())
            async with admitted(self._gate, key, path == HEALTH_PATH):
                return await work(key)
        except Refused as refused:
            await _abort(context, grpc.StatusCode[refused.code], refused.message, refused.retry_after_s)
        except errors.MlserveError as exc:
            await _abort(context, grpc_code(exc), str(exc), exc.retry_after_s)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:
            req_id = os.urandom(8).hex()
            log.exception("internal error on gRPC %s (req_id %s)", rpc, req_id)
            await _abort(context, grpc.StatusCode.INTERNAL, f"internal server error (req_id {req_id})")

    # --- health and metadata -----------------------------------------------------------------

    async def ServerLive(self, request, context):
        return await self._call(context, "ServerLive", lambda key: _done(pb.ServerLiveResponse(live=True)))

    async def ServerReady(self, request, context):
        return await self._call(
            context, "ServerReady", lambda key: _done(pb.ServerReadyResponse(ready=self._state.is_ready))
        )

    async def ServerMetadata(self, request, context):
        answer = pb.ServerMetadataResponse(name="mlserve", version=__version__, extensions=EXTENSIONS)
        return await self._call(context, "ServerMetadata", lambda key: _done(answer))

    async def ModelReady(self, request, context):
        return await self._call(context, "ModelReady", lambda key: _done(self._model_ready(request)))

    def _model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.plane.is_ready(request.name, request.version or None))

    async def ModelMetadata(self, request, context):
        return await self._call(context, "ModelMetadata", lambda key: _done(self._model_metadata(request)))

    def _model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        metadata = self.plane.metadata(request.name, request.version or None)
        info = metadata.info
        answer = pb.ModelMetadataResponse(name=request.name, platform=info.platform, versions=metadata.versions)
        for specs, target in ((info.inputs, answer.inputs), (info.outputs, answer.outputs)):
            for spec in specs:
                target.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return answer

    async def ModelConfig(self, request, context):
        return await self._call(context, "ModelConfig", lambda key: _done(self._model_config(request)))

    def _model_config(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        served = self.plane.pick(request.name, request.version or None)
        config = model_config_message(request.name, self.plane.model(served.model), served)
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request, context):
        def answer(key):
            return _done(statistics_message(self.plane, self._metrics, request.name, request.version))

        return await self._call(context, "ModelStatistics", answer)

    # --- inference ---------------------------------------------------------------------------

    async def ModelInfer(self, request, context):
        return await self._call(context, "ModelInfer", lambda key: self._infer(request, context, key))

    async def _infer(self, message: pb.ModelInferRequest, context, key: ApiKey | None,
                     headers: CIMultiDictProxy[str] | None = None) -> pb.ModelInferResponse:
        """One ModelInfer; `headers` are the call's metadata when the caller has them already (a
        stream's are the same for every request on it)."""
        started = time.monotonic()
        answered_by = message.model_version
        try:
            decoded = grpc_codec.decode_infer_request(
                message, _headers(context) if headers is None else headers, self._limits, started,
                context.time_remaining()
            )
            result = await self._infer_call(with_key_priority(decoded, key.priority if key is not None else None))
            answered_by = result.version
            answer = grpc_codec.encode_infer_response(result)
        except errors.MlserveError as exc:
            self._count(message.model_name, answered_by, status_for(exc), started)
            raise
        self._count(message.model_name, answered_by, 200, started)
        return answer

    async def ModelStreamInfer(self, request_iterator, context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request on the stream is answered on its own as soon as it is done, in any order
        (ids tell them apart); a failed one answers with `error_message` and the stream goes on.

        A request holds its in-flight slot and its place in the stream's window until its answer has
        been written, and the stream is read no further while the window is full, so a client that
        sends without reading holds a bounded amount of server memory (gRPC's flow control then stops
        its sends). The key is checked again after every keys-file reload: a revoked key ends the
        stream with UNAUTHENTICATED at its next request."""
        try:
            key = await authorize(self._gate, MODEL_PATH, _metadata(context, "authorization"), context.peer())
        except Refused as refused:
            await _abort(context, grpc.StatusCode[refused.code], refused.message, refused.retry_after_s)
        window = self._limits.grpc_stream_window
        # At most one answer per request in the window, then a refusal and the end.
        answers: asyncio.Queue[_Written | Refused | None] = asyncio.Queue(maxsize=window + 2)
        reader = asyncio.create_task(self._read_stream(request_iterator, context, key, answers))
        try:
            while (item := await answers.get()) is not None:
                if isinstance(item, Refused):
                    await _abort(context, grpc.StatusCode[item.code], item.message, item.retry_after_s)
                yield item.answer
                if not item.written.done():  # its request's task may have been cancelled meanwhile
                    item.written.set_result(None)
        finally:
            reader.cancel()

    async def _read_stream(self, request_iterator, context, key, answers: asyncio.Queue) -> None:
        window = asyncio.Semaphore(self._limits.grpc_stream_window)
        keyring = self._gate.keyring
        generation = keyring.generation
        headers = _headers(context)
        messages = aiter(request_iterator)
        tasks: set[asyncio.Task] = set()

        def settled(task: asyncio.Task) -> None:
            tasks.discard(task)
            window.release()

        try:
            while True:
                await window.acquire()  # a full window: the stream is not read until an answer is written
                message = await anext(messages, None)
                if message is None:
                    break
                if isinstance(message, Malformed):
                    raise Refused(errors.InvalidInput(malformed_message(message)))
                if keyring.generation != generation:
                    generation = keyring.generation
                    key = await authorize(self._gate, MODEL_PATH, _metadata(context, "authorization"), context.peer())
                task = asyncio.create_task(self._stream_one(message, context, key, headers, answers))
                tasks.add(task)
                task.add_done_callback(settled)
            if tasks:
                await asyncio.gather(*tasks)
        except Refused as refused:
            answers.put_nowait(refused)
        finally:
            for task in tasks:
                task.cancel()
            answers.put_nowait(None)

    async def _stream_one(self, message, context, key, headers, answers: asyncio.Queue) -> None:
        """One request of a stream. Its answer is queued with put_nowait: the queue has room for one
        answer per request in the window, and a request leaves the window only once its answer is
        written."""
        written = asyncio.get_running_loop().create_future()
        try:
            await admit(self._gate, key)
        except Refused as refused:
            answer = pb.ModelStreamInferResponse(error_message=refused.message, infer_response=_echo(message))
            answers.put_nowait(_Written(answer, written))
            await written
            return
        try:
            answers.put_nowait(_Written(await self._stream_answer(message, context, key, headers), written))
            await written  # the slots are held until the client has been sent the answer
        finally:
            release(self._gate, key)

    async def _stream_answer(self, message, context, key, headers) -> pb.ModelStreamInferResponse:
        try:
            return pb.ModelStreamInferResponse(infer_response=await self._infer(message, context, key, headers))
        except errors.MlserveError as exc:
            return pb.ModelStreamInferResponse(error_message=str(exc), infer_response=_echo(message))
        except Exception:
            log.exception("internal error on a gRPC stream request (id %r)", message.id)
            return pb.ModelStreamInferResponse(error_message="internal server error", infer_response=_echo(message))


@dataclasses.dataclass(frozen=True, slots=True)
class _Written:
    """A stream's answer and the future its writer resolves once the answer has gone to the client."""

    answer: pb.ModelStreamInferResponse
    written: asyncio.Future


def _echo(message: pb.ModelInferRequest) -> pb.ModelInferResponse:
    return pb.ModelInferResponse(model_name=message.model_name, model_version=message.model_version, id=message.id)


def _metadata(context: grpc.aio.ServicerContext, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str):
            return value
    return None


async def _done(value):
    return value


def _listen(server: grpc.aio.Server, address: str, config: Config) -> None:
    """TLS with the HTTP server's certificate when it has one (then gRPC speaks TLS only)."""
    if not config.auth.tls_cert:
        server.add_insecure_port(address)
        return
    with open(config.auth.tls_key, "rb") as key, open(config.auth.tls_cert, "rb") as cert:
        server.add_secure_port(address, grpc.ssl_server_credentials([(key.read(), cert.read())]))


def grpc_cleanup_ctx(config: Config, plane: DataPlane, control: ModelControl, state: ServerState, metrics: Metrics,
                     gate: Gate):
    """An aiohttp cleanup context: the gRPC server starts after the repository's first pass and
    stops, finishing in-flight calls within the shutdown grace, before the models are unloaded."""

    async def ctx(app) -> AsyncIterator[None]:
        if config.server.grpc_port == 0:
            yield
            return
        server = grpc.aio.server(interceptors=[MalformedRequests()], options=[
            ("grpc.max_receive_message_length", config.server.max_body_bytes),
            ("grpc.max_send_message_length", -1),
        ])
        servicer = InferenceServicer(plane, control, state, metrics, gate, config.limits)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        address = f"{config.server.host}:{config.server.grpc_port}"
        try:
            _listen(server, address, config)
        except (RuntimeError, OSError) as exc:  # a port in use: say so in one line and stop
            log.error("gRPC cannot listen on %s (%s); choose another --grpc-port (0 = off)", address, exc)
            raise SystemExit(2) from None
        await server.start()
        log.info("gRPC listening on %s", address)
        yield
        await server.stop(config.server.shutdown_grace_s)

    return ctx
