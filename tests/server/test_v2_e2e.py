"""End to end: a real mlserve process, tritonclient.http and plain HTTP, outputs checked against a
direct onnxruntime / torch run of the same files."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.models import DATATYPES


def _client(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"), concurrency=8)


def _post(url: str, body: bytes | str, headers: dict | None = None) -> tuple[int, dict]:
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _reference(test_repo, model: str, version: int, feed: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(str(test_repo / model / str(version) / "model.onnx"))
    return session.run(None, feed)


def _mlp_input(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 768), dtype=np.float32)


def test_health_and_server_metadata(server):
    client = _client(server)
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "mlserve"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_ready(server):
    client = _client(server)
    meta = client.get_model_metadata("mlp")
    assert meta["versions"] == ["1", "2"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 768]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert client.get_model_metadata("mlp_ts")["platform"] == "pytorch_libtorch"
    assert client.get_model_config("mlp")["max_batch_size"] == 64


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("version", ["1", "2"])
def test_mlp_matches_onnxruntime(server, test_repo, binary, version):
    client = _client(server)
    x = _mlp_input(3, seed=int(version))
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("y", binary_data=binary)
    result = client.infer("mlp", [inp], model_version=version, outputs=[out], request_id="req-7")
    expected = _reference(test_repo, "mlp", int(version), {"x": x})[0]
    np.testing.assert_allclose(result.as_numpy("y"), expected, rtol=1e-5, atol=1e-5)
    response = result.get_response()
    assert response["model_version"] == version
    assert response["id"] == "req-7"


def test_unversioned_request_goes_to_newest_and_versions_differ(server, test_repo):
    x = _mlp_input(2)
    v1, v2 = (_reference(test_repo, "mlp", v, {"x": x})[0] for v in (1, 2))
    assert not np.allclose(v1, v2), "the two example versions must have different weights"
    client = _client(server)
    inp = httpclient.InferInput("x", [2, 768], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp])
    assert result.get_response()["model_version"] == "2"
    np.testing.assert_allclose(result.as_numpy("y"), v2, rtol=1e-5, atol=1e-5)


def test_torchscript_matches_torch_and_onnx(server, test_repo):
    x = _mlp_input(4, seed=9)
    module = torch.jit.load(str(test_repo / "mlp_ts" / "1" / "model.pt"))
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    client = _client(server)
    inp = httpclient.InferInput("x", [4, 768], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    got = client.infer("mlp_ts", [inp]).as_numpy("y")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # mlp_ts carries the weights of mlp version 1: two engines, one answer.
    np.testing.assert_allclose(got, _reference(test_repo, "mlp", 1, {"x": x})[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("binary", [False, True])
def test_mixed_inputs_and_output_choice(server, test_repo, binary):
    a = np.array([[1.5, -2.0, 0.0, 3.25], [-1.0, 2.0, 5.0, -0.5]], dtype=np.float32)
    b = np.array([[1, 2, 3, 4], [-(2**40), 0, 7, 9]], dtype=np.int64)
    s = np.array([[b"hello"], ["h\u00e9llo w\u00f6rld".encode()]], dtype=object)
    inputs = []
    for name, array, datatype in (("a", a, "FP32"), ("b", b, "INT64"), ("s", s, "BYTES")):
        inp = httpclient.InferInput(name, list(array.shape), datatype)
        inp.set_data_from_numpy(array, binary_data=binary)
        inputs.append(inp)
    session = ort.InferenceSession(str(test_repo / "mixed" / "1" / "model.onnx"))
    expected = dict(zip(
        [o.name for o in session.get_outputs()],
        session.run(None, {"a": a, "b": b, "s": np.array([[v.decode()] for v in s[:, 0]], dtype=object)}),
    ))
    client = _client(server)
    result = client.infer("mixed", inputs)
    np.testing.assert_allclose(result.as_numpy("sum"), expected["sum"], rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("b_times_3"), expected["b_times_3"])
    np.testing.assert_array_equal(result.as_numpy("positive"), expected["positive"])
    echoed = [v if isinstance(v, bytes) else v.encode() for v in result.as_numpy("s_echo").ravel()]
    assert echoed == list(s.ravel())
    chosen = client.infer("mixed", inputs, outputs=[httpclient.InferRequestedOutput("b_times_3", binary_data=binary)])
    assert [o["name"] for o in chosen.get_response()["outputs"]] == ["b_times_3"]


def datatype_sample(datatype: str) -> np.ndarray:
    """Two rows of three values of `datatype`, its extremes included (the gRPC tests send the same)."""
    rng = np.random.default_rng(3)
    if datatype == "BYTES":
        return np.array([[b"a", b"", b"\x00bin\x01"], [b"xyz", "\u00e9".encode(), b"q"]], dtype=object)
    if datatype == "BOOL":
        return rng.integers(0, 2, (2, 3)).astype(bool)
    from tritonclient.utils import triton_to_np_dtype

    dtype = np.dtype(triton_to_np_dtype(datatype))
    if dtype.kind == "f":
        return (rng.standard_normal((2, 3)) * 100).astype(dtype)
    info = np.iinfo(dtype)
    return np.array([[info.min, info.max, 0], [1, info.max - 1, info.min + 1]], dtype=dtype)


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_round_trips(server, datatype, binary):
    if datatype == "BYTES" and not binary:
        sample = np.array([[b"a", b"", b"caf\xc3\xa9"], [b"xyz", b"12", b"q"]], dtype=object)  # JSON carries text
    else:
        sample = datatype_sample(datatype)
    inp = httpclient.InferInput("x", list(sample.shape), datatype)
    inp.set_data_from_numpy(sample, binary_data=binary)
    out = httpclient.InferRequestedOutput("y", binary_data=binary)
    got = _client(server).infer(f"identity_{datatype.lower()}", [inp], outputs=[out]).as_numpy("y")
    if datatype == "BYTES":
        assert [v if isinstance(v, bytes) else v.encode() for v in got.ravel()] == list(sample.ravel())
    else:
        assert got.dtype == sample.dtype
        np.testing.assert_array_equal(got, sample)


def test_nested_json_data_is_accepted(server, test_repo):
    x = _mlp_input(2, seed=5)
    body = {"inputs": [{"name": "x", "shape": [2, 768], "datatype": "FP32", "data": x.tolist()}]}
    status, result = _post(f"{server.url}/v2/models/mlp/versions/1/infer", json.dumps(body))
    assert status == 200
    got = np.array(result["outputs"][0]["data"], dtype=np.float32).reshape(2, 10)
    np.testing.assert_allclose(got, _reference(test_repo, "mlp", 1, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_concurrent_requests_get_their_own_rows_and_batch(server, test_repo):
    session = ort.InferenceSession(str(test_repo / "mlp" / "1" / "model.onnx"))
    local = threading.local()  # tritonclient's HTTP client is not thread-safe: one per thread

    def one(i: int) -> tuple[np.ndarray, np.ndarray]:
        client = getattr(local, "client", None) or _client(server)
        local.client = client
        x = _mlp_input(1 + i % 4, seed=100 + i)
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=i % 2 == 0)
        return client.infer("mlp", [inp], model_version="1").as_numpy("y"), session.run(None, {"x": x})[0]

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(400)))
    for got, expected in results:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    families = {f.name: f for f in text_string_to_metric_families(_metrics(server))}
    samples = {(s.name, s.labels.get("version")): s.value for s in families["mlserve_batch_requests"].samples
               if s.labels.get("model") == "mlp"}
    mean_requests_per_batch = samples[("mlserve_batch_requests_sum", "1")] / samples[("mlserve_batch_requests_count", "1")]
    assert mean_requests_per_batch > 1.0, "concurrent requests were never batched together"


def _metrics(server) -> str:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as resp:
        return resp.read().decode()


BAD_REQUESTS = [
    ("malformed JSON", "mlp", "{\"inputs\": [", 400, "malformed JSON"),
    ("not an object", "mlp", "[1, 2]", 400, "JSON object"),
    ("unknown model", "nope", {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}, 404, "nope"),
    ("wrong shape", "mlp", {"inputs": [{"name": "x", "shape": [1, 767], "datatype": "FP32", "data": [0.0] * 767}]}, 400, "shape"),
    ("wrong datatype", "mlp", {"inputs": [{"name": "x", "shape": [1, 768], "datatype": "FP64", "data": [0.0] * 768}]}, 400, "FP32"),
    ("missing input", "mixed", {"inputs": [{"name": "a", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}]}, 400, "missing input 'b'"),
    ("length mismatch", "mlp", {"inputs": [{"name": "x", "shape": [1, 768], "datatype": "FP32", "data": [0.0] * 700}]}, 400, "700 values"),
    ("unknown input", "mlp", {"inputs": [{"name": "z", "shape": [1, 768], "datatype": "FP32", "data": [0.0] * 768}]}, 400, "unknown input"),
    ("strings for numbers", "mlp", {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": ["a", "b"]}]}, 400, "strings"),
    ("out of range", "identity_int8", {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT8", "data": [1, 2, 300]}]}, 400, "out of range"),
    ("bad datatype", "mlp", {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FLOAT", "data": [1]}]}, 400, "unknown datatype"),
    ("list as datatype", "mlp", {"inputs": [{"name": "x", "shape": [1, 1], "datatype": [], "data": [1]}]}, 400, "unknown datatype"),
    ("65 dimensions", "mlp", {"inputs": [{"name": "x", "shape": [1] * 65, "datatype": "FP32", "data": [1]}]}, 400, "more than 64"),
    ("unsupported parameter", "mlp", {"inputs": [{"name": "x", "shape": [1, 768], "datatype": "FP32", "data": [0.0] * 768}],
                                      "parameters": {"sequence_id": 7}}, 400, "'sequence_id'"),
    ("class_count not served", "mlp", {"inputs": [{"name": "x", "shape": [1, 768], "datatype": "FP32", "data": [0.0] * 768}],
                                       "outputs": [{"name": "y", "parameters": {"class_count": 3}}]}, 400, "'class_count'"),
    ("request id too long", "mlp", {"id": "r" * 129, "inputs": [{"name": "x", "shape": [1, 768], "datatype": "FP32",
                                                                  "data": [0.0] * 768}]}, 400, "128"),
    ("too many rows", "mlp", {"inputs": [{"name": "x", "shape": [65, 768], "datatype": "FP32", "data": [0.0] * 65 * 768}]}, 400, "max_batch_size"),
    ("unknown output", "mlp", {"inputs": [{"name": "x", "shape": [1, 768], "datatype": "FP32", "data": [0.0] * 768}],
                               "outputs": [{"name": "q"}]}, 400, "unknown output"),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_a_clear_4xx_and_change_nothing(server, case):
    _, model, body, status, needle = case
    payload = body if isinstance(body, str) else json.dumps(body)
    got_status, got = _post(f"{server.url}/v2/models/{model}/infer", payload)
    assert got_status == status, got
    assert needle in got["error"], got
    ok_status, _ = _post(
        f"{server.url}/v2/models/mlp/infer",
        json.dumps({"inputs": [{"name": "x", "shape": [1, 768], "datatype": "FP32", "data": [0.0] * 768}]}),
    )
    assert ok_status == 200


def test_an_unknown_model_is_a_404_in_tritons_words_on_each_model_read(server):
    """Admin state, optimize runs and statistics read the model through the data plane: the same 404."""
    expected = {"error": "Request for unknown model: 'nope' is not found"}
    for path in ("/admin/models/nope", "/admin/models/nope/optimize", "/v2/models/nope/stats"):
        assert _get(server.url + path) == (404, expected), path


def test_unknown_version_and_route(server):
    status, body = _get(f"{server.url}/v2/models/mlp/versions/9")
    assert status == 404 and "'mlp' version 9 is not found" in body["error"]
    status, body = _get(f"{server.url}/v2/nothing/here")
    assert status == 404 and "error" in body
    with pytest.raises(InferenceServerException, match="unknown model"):
        _client(server).get_model_metadata("missing")


def test_bytes_that_are_not_utf8_are_refused_by_an_onnx_model(server):
    inp = httpclient.InferInput("x", [1, 3], "BYTES")
    inp.set_data_from_numpy(np.array([[b"ok", b"\xff\xfe", b"x"]], dtype=object), binary_data=True)
    with pytest.raises(InferenceServerException, match="UTF-8"):
        _client(server).infer("identity_bytes", [inp])


def test_binary_header_longer_than_body_is_rejected(server):
    status, body = _post(
        f"{server.url}/v2/models/mlp/infer", b"{}", {"Inference-Header-Content-Length": "999"}
    )
    assert status == 400 and "Inference-Header-Content-Length" in body["error"]


def test_broken_models_are_reported_and_the_rest_serve(server):
    status, rows = _post(f"{server.url}/v2/repository/index", "{}")
    assert status == 200
    states = {(r["name"], r.get("version")): r for r in rows}
    assert states[("mlp", "1")]["state"] == "READY"
    broken = [r for r in rows if r["name"] == "broken"]
    assert broken and broken[0]["state"] == "UNAVAILABLE" and "broken" in broken[0]["reason"]
    bad_toml = [r for r in rows if r["name"] == "badtoml"]
    assert bad_toml and "max_batch_size" in bad_toml[0]["reason"]
    assert "version" not in bad_toml[0]  # over HTTP a row with no version has no key (over gRPC it is "")
    status, body = _get(f"{server.url}/v2/models/broken/ready")
    assert status == 503 and body["ready"] is False


def test_metrics_parse_and_count_requests(server):
    x = np.zeros((1, 768), dtype=np.float32)
    inp = httpclient.InferInput("x", [1, 768], "FP32")
    inp.set_data_from_numpy(x)
    _client(server).infer("mlp", [inp], model_version="2")
    families = {f.name: f for f in text_string_to_metric_families(_metrics(server))}
    ok = [s for s in families["mlserve_requests"].samples
          if s.name == "mlserve_requests_total" and s.labels == {"model": "mlp", "version": "2", "protocol": "v2", "code": "200"}]
    assert ok and ok[0].value >= 1
    latency = [s for s in families["mlserve_request_duration_seconds"].samples
               if s.name.endswith("_count") and s.labels == {"model": "mlp", "version": "2"}]
    assert latency and latency[0].value >= 1
    assert "mlserve_batch_size" in families


def _child_pids(pid: int) -> list[int]:
    from pathlib import Path

    children = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:
            continue
        if any(line == f"PPid:\t{pid}" for line in lines):
            children.append(int(status.parent.name))
    return children


def test_a_large_json_body_is_decoded_in_a_child_process_and_answers_the_same(server, test_repo):
    """A JSON body over 1 MiB is parsed off this process (orjson would hold the GIL for all of it)."""
    x = np.random.default_rng(11).standard_normal((64, 768)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "x", "shape": [64, 768], "datatype": "FP32", "data": x.ravel().tolist()}]})
    body = body + " " * (1 << 20)  # JSON allows trailing white space: the body is over 1 MiB either way
    req = urllib.request.Request(f"{server.url}/v2/models/mlp/versions/1/infer", data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        answer = json.loads(resp.read())
    expected = _reference(test_repo, "mlp", 1, {"x": x})[0]
    got = np.array(answer["outputs"][0]["data"], np.float32).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert _child_pids(server.proc.pid), "no decoding child process was started"
