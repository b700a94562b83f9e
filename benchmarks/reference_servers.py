"""The two reference servers the serving benchmark measures mlserve against.

    python -m benchmarks.reference_servers bare  --port P --model M.onnx
    python -m benchmarks.reference_servers naive --port P --model M.onnx

`bare`: aiohttp + uvloop, decodes the request exactly as mlserve does (the same v2 decoder) and
returns a fixed answer of the real size without running a model: the HTTP limit of aiohttp.
`lowlevel` and `httptools` do the same on aiohttp's low-level `web.Server` (no router, no
middlewares) and on a bare `asyncio.Protocol` parsing with httptools (keep-alive, pipelining in
order): the three fronts mlserve's fast lane was chosen among; the last is the limit of a Python
front on one core.
`naive`: the same decoding, then one onnxruntime forward per request on the event loop (no
batching, no queue), the way a small hand-written model server usually looks.
"""

from __future__ import annotations

import argparse
import asyncio

import httptools
import numpy as np
import orjson
import uvloop
from aiohttp import web

from mlserve.config import LimitsConfig
from mlserve.server.http.v2_codec import HEADER_LENGTH, decode_infer_request

LIMITS = LimitsConfig()

ROUTES = ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer")
OUTPUT_WIDTH = 10


def _encode(model: str, y: np.ndarray) -> bytes:
    body = {"model_name": model, "model_version": "1",
            "outputs": [{"name": "y", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel()}]}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def bare_app() -> web.Application:
    fixed = _encode("mlp", np.full((1, OUTPUT_WIDTH), 0.125, dtype=np.float32))

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        decode_infer_request(body, request.headers.get(HEADER_LENGTH), request.match_info["model"], None, {}, LIMITS)
        return web.Response(body=fixed, content_type="application/json")

    app = web.Application()
    for route in ROUTES:
        app.router.add_post(route, infer)
    app.router.add_get("/v2/health/ready", lambda request: web.json_response({"ready": True}))
    return app


def lowlevel_server() -> web.Server:
    fixed = _encode("mlp", np.full((1, OUTPUT_WIDTH), 0.125, dtype=np.float32))
    ready = orjson.dumps({"ready": True})

    async def handle(request: web.BaseRequest) -> web.Response:
        if request.method == "GET":
            return web.Response(body=ready, content_type="application/json")
        body = await request.read()
        decode_infer_request(body, request.headers.get(HEADER_LENGTH), "mlp", None, {}, LIMITS)
        return web.Response(body=fixed, content_type="application/json")

    return web.Server(handle)


class _HttptoolsFront(asyncio.Protocol):
    """One connection: httptools parses, each request is decoded and answered on the spot."""

    def __init__(self, fixed: bytes) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._fixed = fixed
        self._body: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._transport.close()

    def on_message_begin(self) -> None:
        self._body, self._headers = [], {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").title()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._parser.get_method() == b"GET":
            answer = b'{"ready":true}'
        else:
            decode_infer_request(b"".join(self._body), self._headers.get(HEADER_LENGTH), "mlp", None, {}, LIMITS)
            answer = self._fixed
        self._transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                              % (len(answer), answer))
        if not self._parser.should_keep_alive():
            self._transport.close()


async def _serve_httptools(port: int) -> None:
    fixed = _encode("mlp", np.full((1, OUTPUT_WIDTH), 0.125, dtype=np.float32))
    server = await asyncio.get_running_loop().create_server(lambda: _HttptoolsFront(fixed), "127.0.0.1", port,
                                                            backlog=1024)
    await server.serve_forever()


async def _serve_lowlevel(port: int) -> None:
    runner = web.ServerRunner(lowlevel_server(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def naive_app(model_path: str) -> web.Application:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        decoded = decode_infer_request(body, request.headers.get(HEADER_LENGTH), request.match_info["model"], None,
                                       {}, LIMITS).request
        (y,) = session.run(["y"], {"x": decoded.inputs["x"].astype(np.float32, copy=False)})
        return web.Response(body=_encode(decoded.model, y), content_type="application/json")

    app = web.Application()
    for route in ROUTES:
        app.router.add_post(route, infer)
    app.router.add_get("/v2/health/ready", lambda request: web.json_response({"ready": True}))
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("bare", "lowlevel", "httptools", "naive"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    uvloop.install()
    if args.kind in ("lowlevel", "httptools"):
        asyncio.run((_serve_lowlevel if args.kind == "lowlevel" else _serve_httptools)(args.port))
        return
    app = bare_app() if args.kind == "bare" else naive_app(args.model)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
