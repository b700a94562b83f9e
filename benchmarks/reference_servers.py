"""The two reference servers the serving benchmark measures mlserve against.

    python -m benchmarks.reference_servers bare  --port P --model M.onnx
    python -m benchmarks.reference_servers naive --port P --model M.onnx

`bare`: aiohttp + uvloop, decodes the request exactly as mlserve does (the same v2 decoder) and
returns a fixed answer of the real size without running a model: the HTTP limit of our stack.
`naive`: the same decoding, then one onnxruntime forward per request on the event loop (no
batching, no queue), the way a small hand-written model server usually looks.
"""

from __future__ import annotations

import argparse
import numpy as np
import orjson
import uvloop
from aiohttp import web

from mlserve.config import LimitsConfig
from mlserve.server.v2_codec import HEADER_LENGTH, decode_infer_request

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
    parser.add_argument("kind", choices=("bare", "naive"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    app = bare_app() if args.kind == "bare" else naive_app(args.model)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
