"""One JSON body reader (server/http/json_body.py) behind every route that takes a JSON object: a body that
is not JSON, one that is JSON but not an object, one over the size limit and one of another type get
the same kind of answer on each route (400, 400, 413, 415), in the route's error shape, naming what
was wrong; nothing is changed. In process: the real create_app and a real ONNX model."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from mlserve import errors
from mlserve.config import ServerConfig
from mlserve.server.http.json_body import read_json
from tests.routing.models import write_scale_onnx
from tests.server.inproc import app_client, config_for

LIMIT = 4096
ROUTES = [
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/mlp/load"),
    ("POST", "/admin/models/mlp/pin"),
    ("PUT", "/admin/models/mlp/traffic"),
    ("POST", "/v2/models/mlp/feedback"),
    ("POST", "/admin/models/mlp/rollout"),
    ("POST", "/admin/models/mlp/optimize"),
    ("POST", "/v2/batch/jobs"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/completions"),
    ("POST", "/tokenize"),
]
JSON = {"Content-Type": "application/json"}
BAD_BODIES = [
    pytest.param(b'{"version": ', JSON, 400, "malformed JSON", id="not-json"),
    pytest.param(b"[1, 2]", JSON, 400, "must be a JSON object, not an array", id="not-an-object"),
    pytest.param(b'"x"', JSON, 400, "must be a JSON object, not a string", id="a-string"),
    pytest.param(b'{"a": "' + b"x" * LIMIT + b'"}', JSON, 413, "over the limit of 4096 bytes", id="oversize"),
    pytest.param(b'{"version": 1}', {"Content-Type": "text/plain"}, 415, "text/plain", id="not-json-type"),
]


@pytest.fixture()
def repo(tmp_path):
    write_scale_onnx(tmp_path / "mlp" / "1" / "model.onnx", 3.0)
    return tmp_path


def _message(route: str, body: dict) -> str:
    error = body["error"]
    if route.startswith(("/v1/", "/tokenize")):
        assert set(error) == {"message", "type", "param", "code"}, error
        assert error["type"] == "invalid_request_error", error
        return error["message"]
    assert isinstance(error, str), body
    return error


@pytest.mark.parametrize("data, headers, status, words", BAD_BODIES)
def test_each_json_route_refuses_a_bad_body_the_same_way(repo, data, headers, status, words):
    async def scenario():
        config = config_for(repo, server=ServerConfig(max_body_bytes=LIMIT, port=0, grpc_port=0, fast_lane=False))
        async with app_client(config) as client:
            before = await (await client.get("/admin/models/mlp/traffic")).json()
            for method, route in ROUTES:
                answer = await client.request(method, route, data=data, headers=headers)
                body = await answer.json()
                assert answer.status == status, (route, body)
                assert words in _message(route, body), (route, body)
            assert await (await client.get("/admin/models/mlp/traffic")).json() == before

    asyncio.run(scenario())


def test_a_chunked_body_over_the_limit_is_a_413_on_each_route(repo):
    """No declared length: the bound holds while the body is read."""

    async def chunks():
        for _ in range(4):
            yield b"x" * LIMIT

    async def scenario():
        config = config_for(repo, server=ServerConfig(max_body_bytes=LIMIT, port=0, grpc_port=0, fast_lane=False))
        async with app_client(config) as client:
            for method, route in ROUTES:
                answer = await client.request(method, route, data=chunks(), headers=JSON)
                body = await answer.json()
                assert answer.status == 413 and "too large" in _message(route, body), (route, body)

    asyncio.run(scenario())


async def _read(body: bytes, content_type: str | None, empty_ok: bool = False):
    """The reader alone, on a bare aiohttp app (no gate in front): what it returns or raises."""
    outcome: list = []

    async def handler(request: web.Request) -> web.Response:
        try:
            outcome.append(await read_json(request, empty_ok=empty_ok))
        except errors.MlserveError as exc:
            outcome.append(exc)
        return web.Response()

    app = web.Application(client_max_size=LIMIT)
    app.router.add_post("/x", handler)
    async with TestClient(TestServer(app)) as client:
        headers = {} if content_type is None else {"Content-Type": content_type}
        await client.post("/x", data=body, headers=headers, skip_auto_headers=["Content-Type"])
    return outcome[0]


@pytest.mark.parametrize("content_type", [None, "application/json", "application/json; charset=utf-8",
                                          "application/vnd.api+json", "application/octet-stream"])
def test_json_octet_stream_and_untyped_bodies_are_read(content_type):
    assert asyncio.run(_read(b'{"a": 1}', content_type)) == {"a": 1}


def test_the_reader_itself_refuses_other_types_and_empty_bodies():
    refused = asyncio.run(_read(b'{"a": 1}', "multipart/form-data; boundary=x"))
    assert isinstance(refused, errors.UnsupportedMediaType) and "multipart/form-data" in str(refused)
    empty = asyncio.run(_read(b"  ", "application/json"))
    assert isinstance(empty, errors.InvalidInput) and "empty" in str(empty)
    assert asyncio.run(_read(b"", "application/json", empty_ok=True)) == {}
    too_large = asyncio.run(_read(b" " * (LIMIT + 1), "application/json"))
    assert isinstance(too_large, errors.PayloadTooLarge) and "over the limit of 4096 bytes" in str(too_large)
