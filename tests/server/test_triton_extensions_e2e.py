"""Triton's extensions over HTTP and gRPC. Statistics: counts equal the requests sent, both protocols
give the same numbers, the JSON parses into ModelStatisticsResponse. Model configuration: the JSON
parses into Triton's ModelConfig and says what model.toml says."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException

from mlserve.examples import write_identity_onnx
from tests.server.http import call
from tests.server_process import free_port, serving


SPLIT_TOML = """\
version_policy = { all = true }
[traffic]
split = { "1" = 50, "2" = 50 }
sticky_key = "header:X-User-Id"
"""
LABELS = ("cat", "dog", "bird", "fish", "frog")
CONFIGURED_TOML = """\
max_batch_size = 8
max_queue_delay_us = 500
preferred_batch_sizes = [4, 8]
max_queue_size = 16
timeout_us = 100000
priority_levels = 3
default_priority_level = 2
instances = 2
intra_op_threads = 2
version_policy = { all = true }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    write_identity_onnx(root / "counted" / "1" / "model.onnx", "FP32")
    write_identity_onnx(root / "idle" / "1" / "model.onnx", "FP32")
    for version in (1, 2):
        write_identity_onnx(root / "configured" / str(version) / "model.onnx", "FP32", width=5)
    (root / "configured" / "model.toml").write_text(CONFIGURED_TOML)
    write_identity_onnx(root / "texts" / "1" / "model.onnx", "BYTES")
    write_identity_onnx(root / "scores" / "1" / "model.onnx", "FP32", width=5)
    (root / "scores" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    write_identity_onnx(root / "counts" / "1" / "model.onnx", "INT32", width=4)
    for version in (1, 2):
        write_identity_onnx(root / "split" / str(version) / "model.onnx", "FP32")
    (root / "split" / "model.toml").write_text(SPLIT_TOML)
    write_identity_onnx(root / "cached" / "1" / "model.onnx", "FP32")
    (root / "cached" / "model.toml").write_text("cache_size = 8\n")
    (root / "texts" / "model.toml").write_text("max_batch_size = 0\n")
    port = free_port()
    with serving(root, "--grpc-port", str(port), log_path=tmp_path_factory.mktemp("logs") / "log") as proc:
        proc.grpc_target = f"127.0.0.1:{port}"
        yield proc


def _send(server, num_http: int, num_grpc: int) -> None:
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    for i in range(num_http):  # one at a time: each request is its own batch
        inp = httpclient.InferInput("x", [2, 3], "FP32")
        inp.set_data_from_numpy(np.full((2, 3), i, np.float32))
        http.infer("counted", [inp])
    grpc = grpcclient.InferenceServerClient(server.grpc_target)
    for i in range(num_grpc):
        inp = grpcclient.InferInput("x", [1, 3], "FP32")
        inp.set_data_from_numpy(np.full((1, 3), i, np.float32))
        grpc.infer("counted", [inp])


def test_counts_match_the_requests_sent_over_both_protocols(server):
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    grpc = grpcclient.InferenceServerClient(server.grpc_target)
    before = http.get_inference_statistics("counted")["model_stats"][0]
    assert before["inference_count"] == 0 and before["execution_count"] == 0
    started_ms = time.time() * 1000
    _send(server, num_http=5, num_grpc=3)
    over_http = http.get_inference_statistics("counted")["model_stats"]
    assert [(s["name"], s["version"]) for s in over_http] == [("counted", "1")]
    stats = over_http[0]
    assert stats["inference_count"] == 5 * 2 + 3
    assert stats["execution_count"] == 8
    assert started_ms <= stats["last_inference"] <= time.time() * 1000
    infer = stats["inference_stats"]
    assert infer["success"]["count"] == 8 and infer["fail"]["count"] == 0
    assert infer["queue"]["count"] == 8 and infer["compute_infer"]["count"] == 8
    assert infer["success"]["ns"] >= infer["compute_infer"]["ns"] > 0
    assert {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]} == {1: 3, 2: 5}
    parsed = json_format.ParseDict({"model_stats": over_http}, service_pb2.ModelStatisticsResponse())
    assert parsed == grpc.get_inference_statistics("counted", "1")


def test_every_model_and_unknown_names(server):
    rows = call(f"{server.url}/v2/models/stats").body["model_stats"]
    assert [(r["name"], r["version"]) for r in rows] == [
        ("cached", "1"), ("configured", "1"), ("configured", "2"), ("counted", "1"), ("counts", "1"),
        ("idle", "1"), ("scores", "1"), ("split", "1"), ("split", "2"), ("texts", "1")]
    assert call(f"{server.url}/v2/models/idle/versions/1/stats").body["model_stats"][0]["execution_count"] == 0
    assert call(f"{server.url}/v2/models/nope/stats").status == 404
    assert call(f"{server.url}/v2/models/idle/versions/9/stats").status == 404
    with pytest.raises(InferenceServerException) as excinfo:
        grpcclient.InferenceServerClient(server.grpc_target).get_inference_statistics("nope")
    assert excinfo.value.status() == "StatusCode.NOT_FOUND"


def test_config_parses_as_tritons_and_says_what_model_toml_says(server):
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    body = http.get_model_config("configured", "2")
    config = json_format.ParseDict(body, model_config_pb2.ModelConfig())
    assert config == grpcclient.InferenceServerClient(server.grpc_target).get_model_config("configured", "2").config
    assert (config.name, config.platform, config.max_batch_size) == ("configured", "onnxruntime_onnx", 8)
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("x", model_config_pb2.TYPE_FP32, [5])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("y", [5])]  # no batch dimension
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [4, 8] and batching.max_queue_delay_microseconds == 500
    assert (batching.priority_levels, batching.default_priority_level) == (3, 2)
    policy = batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (16, 100000)
    assert config.version_policy.HasField("all")
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert config.parameters["intra_op_threads"].string_value == "2"


def test_config_of_an_unbatched_string_model(server):
    body = call(f"{server.url}/v2/models/texts/config").body
    config = json_format.ParseDict(body, model_config_pb2.ModelConfig())
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [(t.data_type, list(t.dims)) for t in config.input] == [(model_config_pb2.TYPE_STRING, [-1, 3])]
    assert config.version_policy.latest.num_versions == 1


def _top_k(row, k: int, labels=()) -> list[bytes]:
    """Triton's "score:index[:label]" strings, computed here by plain sorting."""
    ranked = sorted(range(len(row)), key=lambda i: (-float(row[i]), i))[:k]
    texts = []
    for i in ranked:
        score = f"{float(row[i]):f}" if isinstance(row[i], (float, np.floating)) else str(int(row[i]))
        texts.append(f"{score}:{i}" + (f":{labels[i]}" if i < len(labels) else ""))
    return [t.encode() for t in texts]


@pytest.mark.parametrize("binary", [False, True])
def test_class_count_gives_top_k_with_labels_over_http_and_grpc(server, binary):
    x = np.array([[0.25, 3.5, -1.0, 3.5, 0.75], [9.0, -2.0, 0.5, 1.25, 4.0]], dtype=np.float32)
    hinp = httpclient.InferInput("x", [2, 5], "FP32")
    hinp.set_data_from_numpy(x, binary_data=binary)
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    out = httpclient.InferRequestedOutput("y", binary_data=binary, class_count=3)
    over_http = http.infer("scores", [hinp], outputs=[out]).as_numpy("y")
    ginp = grpcclient.InferInput("x", [2, 5], "FP32")
    ginp.set_data_from_numpy(x)
    over_grpc = grpcclient.InferenceServerClient(server.grpc_target).infer(
        "scores", [ginp], outputs=[grpcclient.InferRequestedOutput("y", class_count=3)]).as_numpy("y")
    expected = [_top_k(row, 3, LABELS) for row in x]
    for got in (over_http, over_grpc):
        assert got.shape == (2, 3)
        assert [[v if isinstance(v, bytes) else v.encode() for v in row] for row in got] == expected
    assert expected[0][:2] == [b"3.500000:1:dog", b"3.500000:3:fish"]
    config = http.get_model_config("scores")
    assert config["output"][0]["label_filename"] == "labels.txt"


def test_class_count_without_labels_and_bad_counts(server):
    x = np.array([[5, -7, 12, 12]], dtype=np.int32)
    inp = grpcclient.InferInput("x", [1, 4], "INT32")
    inp.set_data_from_numpy(x)
    client = grpcclient.InferenceServerClient(server.grpc_target)
    got = client.infer("counts", [inp], outputs=[grpcclient.InferRequestedOutput("y", class_count=10)]).as_numpy("y")
    assert list(got[0]) == _top_k(x[0], 10) == [b"12:2", b"12:3", b"5:0", b"-7:1"]
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT32", "data": [1, 2, 3, 4]}],
            "outputs": [{"name": "y", "parameters": {"classification": 0}}]}
    answer = call(f"{server.url}/v2/models/counts/infer", body)
    assert answer.status == 400 and "classification" in answer.body["error"]
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "BYTES", "data": ["a", "b", "c"]}],
            "outputs": [{"name": "y", "parameters": {"classification": 2}}]}
    answer = call(f"{server.url}/v2/models/texts/infer", body)
    assert answer.status == 400 and "cannot be classified" in answer.body["error"]


def test_v2_with_a_trailing_slash_and_unsupported_methods(server):
    assert call(f"{server.url}/v2/").body == call(f"{server.url}/v2").body
    answer = call(f"{server.url}/v2/models/idle", method="DELETE")
    assert answer.status == 405 and "GET" in answer.headers.get("Allow", "")
    assert call(f"{server.url}/v2/models/idle/infer", method="GET").status == 405


def test_a_sticky_split_sends_a_user_to_the_same_version_over_both_protocols(server):
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    grpc = grpcclient.InferenceServerClient(server.grpc_target)
    x = np.ones((1, 3), np.float32)
    chosen = {}
    for user in (f"user-{i}" for i in range(16)):
        hinp = httpclient.InferInput("x", [1, 3], "FP32")
        hinp.set_data_from_numpy(x)
        over_http = http.infer("split", [hinp], headers={"X-User-Id": user}).get_response()["model_version"]
        ginp = grpcclient.InferInput("x", [1, 3], "FP32")
        ginp.set_data_from_numpy(x)
        for _ in range(2):
            over_grpc = grpc.infer("split", [ginp], headers={"x-user-id": user}).get_response().model_version
            assert over_grpc == over_http, user
        chosen[user] = over_http
    assert set(chosen.values()) == {"1", "2"}


def test_response_cache_hits_are_counted_apart(server):
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    inp = httpclient.InferInput("x", [1, 3], "FP32")
    inp.set_data_from_numpy(np.full((1, 3), 2.5, np.float32))
    for _ in range(3):
        http.infer("cached", [inp])
    stats = http.get_inference_statistics("cached")["model_stats"][0]
    assert stats["inference_stats"]["cache_miss"]["count"] == 1
    assert stats["inference_stats"]["cache_hit"]["count"] == 2
    assert stats["execution_count"] == 1 and stats["inference_stats"]["success"]["count"] == 1
