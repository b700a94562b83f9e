"""End to end over gRPC: a real mlserve process, tritonclient.grpc and tritonclient.grpc.aio, answers
checked against onnxruntime and against the same request over HTTP."""

from __future__ import annotations

import asyncio
import queue

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor, triton_to_np_dtype

from tests.models import DATATYPES
from tests.server.http import call
from tests.server.test_v2_e2e import datatype_sample
from tests.server_process import free_port, serving

# Typed-contents field per datatype, as the proto defines them (FP16 has none).
CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


@pytest.fixture(scope="module")
def grpc_server(test_repo, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("grpc-logs") / "mlserve.log"
    with serving(test_repo, "--grpc-port", str(port), log_path=log) as proc:
        proc.grpc_target = f"127.0.0.1:{port}"
        yield proc


def _client(server) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc_target)


def _http(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"))


def _reference(test_repo, datatype: str, sample: np.ndarray) -> np.ndarray:
    if datatype == "BYTES":
        return sample  # onnxruntime takes text only; the identity model gives the bytes back
    path = test_repo / f"identity_{datatype.lower()}" / "1" / "model.onnx"
    return ort.InferenceSession(str(path)).run(None, {"x": sample})[0]


def _typed_request(model: str, sample: np.ndarray, datatype: str) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, id="typed")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=list(sample.shape))
    getattr(tensor.contents, CONTENTS[datatype]).extend(sample.ravel().tolist())
    return request


def _raw_output(response: service_pb2.ModelInferResponse, datatype: str) -> np.ndarray:
    shape = list(response.outputs[0].shape)
    raw = response.raw_output_contents[0]
    if datatype == "BYTES":
        return deserialize_bytes_tensor(raw).reshape(shape)
    return np.frombuffer(raw, dtype=triton_to_np_dtype(datatype)).reshape(shape)


def test_health_metadata_and_config_match_http(grpc_server):
    client, http = _client(grpc_server), _http(grpc_server)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "mlserve" and meta["extensions"] == http.get_server_metadata()["extensions"]
    for model in ("mlp", "mixed", "identity_bytes"):
        meta = client.get_model_metadata(model, as_json=True)
        for tensor in meta["inputs"] + meta["outputs"]:  # protobuf's JSON writes int64 as strings
            tensor["shape"] = [int(d) for d in tensor["shape"]]
        assert meta == http.get_model_metadata(model)
        assert client.is_model_ready(model) and client.is_model_ready(model, "1")
    assert client.get_model_config("mlp").config.max_batch_size == 64


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_equals_http_and_onnxruntime(grpc_server, test_repo, datatype):
    sample = datatype_sample(datatype)
    expected = _reference(test_repo, datatype, sample)
    model = f"identity_{datatype.lower()}"
    inp = grpcclient.InferInput("x", list(sample.shape), datatype)
    inp.set_data_from_numpy(sample)
    over_grpc = _client(grpc_server).infer(model, [inp]).as_numpy("y")
    hinp = httpclient.InferInput("x", list(sample.shape), datatype)
    hinp.set_data_from_numpy(sample, binary_data=True)
    over_http = _http(grpc_server).infer(model, [hinp]).as_numpy("y")
    answers = [over_grpc, over_http]
    if datatype != "BYTES":  # JSON carries BYTES as text; the binary answers cover them
        jinp = httpclient.InferInput("x", list(sample.shape), datatype)
        jinp.set_data_from_numpy(sample, binary_data=False)
        json_out = httpclient.InferRequestedOutput("y", binary_data=False)
        answers.append(_http(grpc_server).infer(model, [jinp], outputs=[json_out]).as_numpy("y"))
    if datatype in CONTENTS:  # typed contents: the same tensor without raw_input_contents
        with grpc.insecure_channel(grpc_server.grpc_target) as channel:
            response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                _typed_request(model, sample, datatype)
            )
        assert response.id == "typed" and response.outputs[0].datatype == datatype
        answers.append(_raw_output(response, datatype))
    for got in answers:
        assert got.shape == expected.shape
        if datatype == "BYTES":
            assert list(got.ravel()) == list(expected.ravel())
        else:
            assert got.dtype == expected.dtype
            np.testing.assert_array_equal(got, expected)


def test_mixed_model_and_output_choice_equal_http(grpc_server):
    a = np.array([[1.5, -2.0, 0.0, 3.25], [-1.0, 2.0, 5.0, -0.5]], dtype=np.float32)
    b = np.array([[1, 2, 3, 4], [-(2**40), 0, 7, 9]], dtype=np.int64)
    s = np.array([[b"hello"], ["h\u00e9llo".encode()]], dtype=object)
    g_inputs, h_inputs = [], []
    for name, array, datatype in (("a", a, "FP32"), ("b", b, "INT64"), ("s", s, "BYTES")):
        g_inputs.append(grpcclient.InferInput(name, list(array.shape), datatype))
        g_inputs[-1].set_data_from_numpy(array)
        h_inputs.append(httpclient.InferInput(name, list(array.shape), datatype))
        h_inputs[-1].set_data_from_numpy(array, binary_data=True)
    g = _client(grpc_server).infer("mixed", g_inputs)
    h = _http(grpc_server).infer("mixed", h_inputs)
    for out in ("sum", "b_times_3", "positive", "s_echo"):
        np.testing.assert_array_equal(g.as_numpy(out), h.as_numpy(out))
    chosen = _client(grpc_server).infer("mixed", g_inputs, outputs=[grpcclient.InferRequestedOutput("b_times_3")])
    assert [o.name for o in chosen.get_response().outputs] == ["b_times_3"]
    np.testing.assert_array_equal(chosen.as_numpy("b_times_3"), b * 3)


def test_aio_client_concurrent_requests_get_their_own_rows(grpc_server, test_repo):
    session = ort.InferenceSession(str(test_repo / "mlp" / "1" / "model.onnx"))
    xs = [np.random.default_rng(i).standard_normal((1 + i % 3, 768), dtype=np.float32) for i in range(48)]

    async def run() -> list[np.ndarray]:
        async with grpcaio.InferenceServerClient(grpc_server.grpc_target) as client:
            assert await client.is_server_ready()

            async def one(x):
                inp = grpcaio.InferInput("x", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                return (await client.infer("mlp", [inp], model_version="1")).as_numpy("y")

            return await asyncio.gather(*(one(x) for x in xs))

    for x, got in zip(xs, asyncio.run(run())):
        np.testing.assert_allclose(got, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


def _status(excinfo) -> str:
    return excinfo.value.status()


@pytest.mark.parametrize("model, shape, datatype, outputs, code, text", [
    ("nope", [1, 3], "FP32", None, "StatusCode.NOT_FOUND", "unknown model"),
    ("identity_fp32", [1, 4], "FP32", None, "StatusCode.INVALID_ARGUMENT", "shape"),
    ("identity_fp32", [1, 3], "INT32", None, "StatusCode.INVALID_ARGUMENT", "must be FP32"),
    ("identity_fp32", [1, 3], "FP32", "nope", "StatusCode.INVALID_ARGUMENT", "unknown output"),
])
def test_errors_map_to_grpc_codes(grpc_server, model, shape, datatype, outputs, code, text):
    inp = grpcclient.InferInput("x", shape, datatype)
    inp.set_data_from_numpy(np.zeros(shape, dtype=triton_to_np_dtype(datatype)))
    requested = [grpcclient.InferRequestedOutput(outputs)] if outputs else None
    with pytest.raises(InferenceServerException) as excinfo:
        _client(grpc_server).infer(model, [inp], outputs=requested)
    assert _status(excinfo) == code and text in excinfo.value.message()


def test_unhonoured_options_are_refused_by_name(grpc_server):
    inp = grpcclient.InferInput("x", [1, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException) as excinfo:
        _client(grpc_server).load_model("mlp", config='{"sequence_batching": {}}')
    assert _status(excinfo) == "StatusCode.INVALID_ARGUMENT" and "sequence_batching" in excinfo.value.message()
    request = _typed_request("identity_fp32", np.zeros((1, 3), np.float32), "FP32")
    request.inputs[0].parameters["shared_memory_region"].string_param = "r"
    with grpc.insecure_channel(grpc_server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as excinfo:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "shared_memory_region" in excinfo.value.details()


def test_deadlines_answer_deadline_exceeded(grpc_server):
    x = np.zeros((1, 1024), np.float32)
    inp = grpcclient.InferInput("x", [1, 1024], "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as excinfo:
        _client(grpc_server).infer("slow", [inp], timeout=1000)  # the request's own 1 ms
    assert _status(excinfo) == "StatusCode.DEADLINE_EXCEEDED" and "deadline" in excinfo.value.message()
    with pytest.raises(InferenceServerException) as excinfo:
        _client(grpc_server).infer("slow", [inp], client_timeout=0.001)  # the call's gRPC deadline
    assert _status(excinfo) == "StatusCode.DEADLINE_EXCEEDED"


def test_stream_infer_answers_every_request(grpc_server, test_repo):
    session = ort.InferenceSession(str(test_repo / "mlp" / "2" / "model.onnx"))
    answers: queue.Queue = queue.Queue()
    client = _client(grpc_server)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    xs = {}
    try:
        for i in range(12):
            xs[str(i)] = np.random.default_rng(50 + i).standard_normal((2, 768), dtype=np.float32)
            inp = grpcclient.InferInput("x", [2, 768], "FP32")
            inp.set_data_from_numpy(xs[str(i)])
            client.async_stream_infer("mlp", [inp], request_id=str(i), model_version="2")
        bad = grpcclient.InferInput("x", [2, 5], "FP32")
        bad.set_data_from_numpy(np.zeros((2, 5), np.float32))
        client.async_stream_infer("mlp", [bad], request_id="bad")
        got = [answers.get(timeout=60) for _ in range(13)]
    finally:
        client.stop_stream()
    errors = [error for _, error in got if error is not None]
    assert len(errors) == 1 and "shape" in errors[0].message()
    results = {r.get_response().id: r.as_numpy("y") for r, e in got if e is None}
    assert sorted(results) == sorted(xs)
    for req_id, y in results.items():
        np.testing.assert_allclose(y, session.run(None, {"x": xs[req_id]})[0], rtol=1e-5, atol=1e-5)


def test_repository_calls(grpc_server):
    client = _client(grpc_server)
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "mlp", "version": "2", "state": "READY"}.items() <= next(
        m for m in index if m["name"] == "mlp" and m.get("version") == "2").items()
    assert any(m["name"] == "broken" and m["state"] == "UNAVAILABLE" for m in index)
    client.unload_model("identity_int16")
    assert not client.is_model_ready("identity_int16")
    client.load_model("identity_int16")
    assert client.is_model_ready("identity_int16")


def test_requests_are_counted_with_protocol_grpc(grpc_server):
    def count() -> float:
        text = call(f"{grpc_server.url}/metrics").body
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if (sample.name == "mlserve_requests_total" and labels["protocol"] == "grpc"
                        and labels["model"] == "identity_uint8" and labels["code"] == "200"):
                    return sample.value
        return 0.0

    before = count()
    inp = grpcclient.InferInput("x", [1, 3], "UINT8")
    inp.set_data_from_numpy(np.ones((1, 3), np.uint8))
    for _ in range(3):
        _client(grpc_server).infer("identity_uint8", [inp])
    assert count() == before + 3


def test_a_full_queue_answers_resource_exhausted_with_retry_after(grpc_server):
    """`slow` queues at most 8 requests; 24 at once must see some refused, the rest answered."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name="slow")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1024])
    request.raw_input_contents.append(np.ones((1, 1024), "<f4").tobytes())

    async def run() -> list:
        async with grpc.aio.insecure_channel(grpc_server.grpc_target) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

            async def one():
                call = stub.ModelInfer(request, timeout=120)
                try:
                    await call
                    return "OK", None
                except grpc.aio.AioRpcError as error:
                    return error.code().name, dict(await call.trailing_metadata() or ())

            return await asyncio.gather(*(one() for _ in range(24)))

    outcomes = asyncio.run(run())
    codes = [code for code, _ in outcomes]
    assert "OK" in codes and "RESOURCE_EXHAUSTED" in codes, codes
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}
    assert all(meta.get("retry-after", "").isdigit() for code, meta in outcomes if code != "OK")
