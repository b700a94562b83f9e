"""In-process handler tests of the composition root: the real create_app with a real ONNX model,
aiohttp's test client, no subprocess. What they pin: the start/stop order, one route table per
protocol, each protocol's error shape."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from mlserve.server.app import Stage, lifecycle
from tests.routing.models import write_scale_onnx
from tests.server.inproc import app_client, config_for


def _run(coro):
    return asyncio.run(coro)


@pytest.fixture()
def repo(tmp_path):
    write_scale_onnx(tmp_path / "mlp" / "1" / "model.onnx", 3.0)
    return tmp_path


def test_stages_start_in_order_and_stop_in_reverse():
    calls: list[str] = []

    async def astart():
        calls.append("b+")

    ordered = [
        Stage("a", start=lambda: calls.append("a+"), stop=lambda: calls.append("a-")),
        Stage("b", start=astart, stop=lambda: calls.append("b-")),
        Stage("c", stop=lambda: calls.append("c-")),
    ]

    async def scenario():
        ctx = lifecycle(ordered)(web.Application())
        await ctx.__anext__()
        calls.append("serving")
        with pytest.raises(StopAsyncIteration):
            await ctx.__anext__()

    _run(scenario())
    assert calls == ["a+", "b+", "serving", "c-", "b-", "a-"]


def test_a_stage_that_fails_to_start_stops_the_ones_before_it():
    calls: list[str] = []

    def broken():
        raise RuntimeError("no port")

    ordered = [
        Stage("a", start=lambda: calls.append("a+"), stop=lambda: calls.append("a-")),
        Stage("b", start=broken, stop=lambda: calls.append("b-")),
        Stage("c", start=lambda: calls.append("c+")),
    ]

    async def scenario():
        with pytest.raises(RuntimeError, match="no port"):
            await lifecycle(ordered)(web.Application()).__anext__()

    _run(scenario())
    assert calls == ["a+", "a-"]


def test_v2_answers_and_errors_in_its_own_shape(repo):
    async def scenario():
        async with app_client(config_for(repo)) as client:
            ready = await client.get("/v2/health/ready")
            assert ready.status == 200 and await ready.json() == {"ready": True}
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
            infer = await client.post("/v2/models/mlp/infer", json=body)
            assert infer.status == 200
            assert (await infer.json())["outputs"][0]["data"] == [3.0, 6.0, 9.0]
            missing = await client.get("/v2/models/nope")
            assert missing.status == 404 and (await missing.json()) == {"error": "Request for unknown model: 'nope' is not found"}
            bad = await client.post("/v2/models/mlp/infer", data=b"{not json")
            assert bad.status == 400 and isinstance((await bad.json())["error"], str)

    _run(scenario())


def test_v1_is_a_sub_application_with_openai_error_shape(repo):
    async def scenario():
        async with app_client(config_for(repo)) as client:
            models = await client.get("/v1/models")
            assert await models.json() == {"object": "list", "data": []}  # mlp does not generate
            refused = await client.post("/v1/completions", json={"model": "mlp", "prompt": "hi", "max_tokens": 2})
            error = (await refused.json())["error"]
            assert refused.status == 400 and error["type"] == "invalid_request_error"
            assert "not a generation model" in error["message"]
            unknown = await client.post("/v1/completions", json={"model": "nope", "prompt": "hi"})
            assert unknown.status == 404 and (await unknown.json())["error"]["code"] == "model_not_found"
            no_route = await client.get("/v1/nothing-here")
            assert no_route.status == 404 and (await no_route.json())["error"]["type"] == "not_found_error"

    _run(scenario())


def test_every_route_is_listed_once_and_infer_comes_first(repo):
    async def scenario():
        async with app_client(config_for(repo)) as client:
            doc = await (await client.get("/openapi.json")).json()
            routes = [(r.method, r.resource.canonical) for r in client.app.router.routes()
                      if r.method != "HEAD" and r.resource is not None]
            return doc, routes

    doc, routes = _run(scenario())
    assert len(routes) == len(set(routes))
    for path in ("/v1/completions", "/v1/chat/completions", "/v2/models/{model}/infer", "/admin/models/{model}/pin",
                 "/v2/repository/index", "/metrics"):
        assert path in doc["paths"], path
    paths = [p for _, p in routes]
    assert paths.index("/v2/models/{model}/infer") < paths.index("/v2/models/{model}")
