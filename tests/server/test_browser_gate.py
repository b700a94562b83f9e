"""The browser gate against a real server with keys off (the `make serve` setup), sent the requests a
hostile page or a DNS-rebinding attack makes: another Origin, another Host, a text/plain body. Each
is refused and changes nothing; the same request sent properly goes through. A listed origin gets
CORS. The start-up log warns that admin routes are open, and each such admin request is logged."""

from __future__ import annotations

import base64
import http.client
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from mlserve.examples import write_identity_onnx
from tests.server_process import MlserveProcess

EVIL = "https://evil.example"
APP = "https://app.example"
JSON = {"Content-Type": "application/json"}


@dataclass
class Raw:
    status: int
    headers: http.client.HTTPMessage
    body: Any


def raw(url: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Raw:
    """Exactly these headers (http.client adds Host and Content-Length only, and Host not when given)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    try:
        conn.request(method, path, data, headers or {})
        resp = conn.getresponse()
        payload = resp.read()
        try:
            decoded = json.loads(payload) if payload else None
        except ValueError:
            decoded = payload.decode(errors="replace")
        return Raw(resp.status, resp.headers, decoded)
    finally:
        conn.close()


def upload_body(onnx: bytes, version: int) -> dict:
    return {"parameters": {f"file:{version}/model.onnx": base64.b64encode(onnx).decode()}}


INFER = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    write_identity_onnx(root / "identity" / "1" / "model.onnx", "FP32")
    proc = MlserveProcess(root, log_path=tmp_path_factory.mktemp("logs") / "log")
    proc.root = root
    yield proc.wait_ready()
    assert proc.stop() == 0, proc.log()


def versions(server, model: str = "identity") -> list[str]:
    rows = raw(server.url, "POST", "/v2/repository/index", {}, JSON).body
    return sorted(r["version"] for r in rows if r["name"] == model)


HOSTILE = [
    pytest.param({"Origin": EVIL, **JSON}, 403, "cors_origins", id="another-origin"),
    pytest.param({"Host": "rebind.evil.example:8000", **JSON}, 403, "allowed_hosts", id="dns-rebinding-host"),
    pytest.param({"Content-Type": "text/plain;charset=UTF-8"}, 415, "application/json", id="text-plain"),
    pytest.param({"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json", id="form"),
    pytest.param({"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "no-cors"}, 415, "no Content-Type",
                 id="browser-body-without-type"),
]


@pytest.mark.parametrize("headers, status, needle", HOSTILE)
def test_a_hostile_upload_is_refused_and_nothing_is_written(open_server, headers, status, needle):
    onnx = (open_server.root / "identity" / "1" / "model.onnx").read_bytes()
    answer = raw(open_server.url, "POST", "/v2/repository/models/identity/load", upload_body(onnx, 7), headers)
    assert answer.status == status and needle in answer.body["error"], answer.body
    assert not (open_server.root / "identity" / "7").exists() and versions(open_server) == ["1"]


@pytest.mark.parametrize("headers, status, needle", HOSTILE)
def test_hostile_infer_and_admin_requests_are_refused(open_server, headers, status, needle):
    answer = raw(open_server.url, "POST", "/v2/models/identity/infer", INFER, headers)
    assert answer.status == status and needle in answer.body["error"], answer.body
    answer = raw(open_server.url, "POST", "/admin/models/identity/pin", {"version": 1}, headers)
    assert answer.status == status and needle in answer.body["error"], answer.body
    assert raw(open_server.url, "GET", "/admin/models/identity").body["pinned"] is None


def test_a_rebinding_host_cannot_even_read(open_server):
    for path in ("/status", "/v2/models/identity", "/", "/v2/health/ready"):
        assert raw(open_server.url, "GET", path, headers={"Host": "rebind.evil.example"}).status == 403, path


def test_the_same_requests_sent_properly_go_through(open_server):
    """The control: JSON with no Origin (curl, scripts), the same-origin page, tritonclient's bodies
    with no type or octet-stream, and the binary tensor extension."""
    url = open_server.url
    host = urlsplit(url).netloc
    assert raw(url, "POST", "/v2/models/identity/infer", INFER, JSON).status == 200
    same_origin = {"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin", **JSON}
    assert raw(url, "POST", "/v2/models/identity/infer", INFER, same_origin).status == 200
    assert raw(url, "POST", "/v2/models/identity/infer", INFER, {}).status == 200  # tritonclient.http: no type
    octet = {"Content-Type": "application/octet-stream"}  # tritonclient.http.aio
    assert raw(url, "POST", "/v2/models/identity/infer", INFER, octet).status == 200
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 12}}]}).encode()
    binary = header + np.array([1, 2, 3], np.float32).tobytes()
    answer = raw(url, "POST", "/v2/models/identity/infer", binary,
                 {**octet, "Inference-Header-Content-Length": str(len(header))})
    assert answer.status == 200 and answer.body["outputs"][0]["data"] == [1.0, 2.0, 3.0]
    for name in ("localhost", f"localhost:{open_server.port}", "127.0.0.1", f"[::1]:{open_server.port}"):
        assert raw(url, "GET", "/v2/health/ready", headers={"Host": name}).status == 200, name
    onnx = (open_server.root / "identity" / "1" / "model.onnx").read_bytes()
    answer = raw(url, "POST", "/v2/repository/models/identity/load", upload_body(onnx, 2), JSON)
    assert answer.status == 200, answer.body
    assert "2" in versions(open_server)


def test_open_admin_routes_are_warned_about_at_start_and_logged_per_request(open_server):
    raw(open_server.url, "GET", "/admin/models/identity")
    log = open_server.log()
    assert "admin routes (/admin, /v2/repository, /v2/batch) are served WITHOUT API keys" in log
    assert "admin request served without an API key: GET /admin/models/{model} from 127.0.0.1" in log


def test_a_listed_origin_gets_cors_and_others_still_do_not(tmp_path):
    write_identity_onnx(tmp_path / "repo" / "identity" / "1" / "model.onnx", "FP32")
    proc = MlserveProcess(tmp_path / "repo", "--cors-origins", f"{APP},http://localhost:3000",
                          "--allowed-hosts", "mlserve.example", log_path=tmp_path / "log")
    try:
        url = proc.wait_ready().url
        preflight = raw(url, "OPTIONS", "/v2/models/identity/infer", headers={
            "Origin": APP, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == APP
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        assert preflight.headers["Access-Control-Allow-Headers"] == "authorization,content-type"
        answer = raw(url, "POST", "/v2/models/identity/infer", INFER, {"Origin": APP, **JSON})
        assert answer.status == 200 and answer.headers["Access-Control-Allow-Origin"] == APP
        assert "Origin" in answer.headers["Vary"]
        streamed = raw(url, "GET", "/v2/models/identity", headers={"Origin": "http://localhost:3000"})
        assert streamed.status == 200 and streamed.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        evil = raw(url, "OPTIONS", "/v2/models/identity/infer", headers={
            "Origin": EVIL, "Access-Control-Request-Method": "POST"})
        assert evil.status == 403 and "Access-Control-Allow-Origin" not in evil.headers
        assert raw(url, "GET", "/v2/health/ready", headers={"Host": "mlserve.example:8000"}).status == 200
        assert raw(url, "GET", "/v2/health/ready", headers={"Host": "other.example"}).status == 403
    finally:
        assert proc.stop() == 0, proc.log()
