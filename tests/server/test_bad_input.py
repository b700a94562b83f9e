"""Bad input is a 400 / INVALID_ARGUMENT naming it, over HTTP and gRPC alike: versions written in
non-ASCII digits or too long, too many dimensions, a malformed protobuf, and upload file names no
file system takes. Ends with a hypothesis property that drives the live gRPC server with arbitrary
requests and bytes: never INTERNAL or UNKNOWN, and the server lives."""

from __future__ import annotations

import queue
import urllib.parse

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from mlserve.examples import write_identity_onnx
from mlserve.server.proto import grpc_service_pb2 as pb
from mlserve.server.proto import grpc_service_pb2_grpc as pb_grpc
from tests.server.http import call, infer_body
from tests.server_process import free_port, serving

X = np.arange(6, dtype=np.float32).reshape(2, 3)
BAD_VERSIONS = ["²", "١", "0", "01", "-1", "9" * 19, "99999999999999999999999"]
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    write_identity_onnx(root / "identity" / "1" / "model.onnx", "FP32")
    batch = tmp_path_factory.mktemp("batch")
    port = free_port()
    log = tmp_path_factory.mktemp("logs") / "log"
    with serving(root, "--grpc-port", str(port), "--batch-dir", str(batch), log_path=log) as proc:
        proc.grpc_target = f"127.0.0.1:{port}"
        yield proc


def _grpc_status(call_) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call_()
    return caught.value.status(), caught.value.message()


def _grpc_infer(server, version: str = ""):
    inp = grpcclient.InferInput("x", [2, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((2, 3), dtype=np.float32))
    return grpcclient.InferenceServerClient(server.grpc_target).infer("identity", [inp], model_version=version)


@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_a_version_that_is_no_positive_ascii_integer_is_a_400_over_http(plain, version):
    version = urllib.parse.quote(version)
    answer = call(f"{plain.url}/v2/models/identity/versions/{version}/infer", infer_body(X))
    assert answer.status == 400 and "is not a version" in answer.body["error"], answer
    answer = call(f"{plain.url}/v2/models/identity/versions/{version}")
    assert answer.status == 400 and "is not a version" in answer.body["error"], answer


@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_a_version_that_is_no_positive_ascii_integer_is_invalid_argument_over_grpc(plain, version):
    status, message = _grpc_status(lambda: _grpc_infer(plain, version))
    assert status == "StatusCode.INVALID_ARGUMENT" and "is not a version" in message, message
    client = grpcclient.InferenceServerClient(plain.grpc_target)
    status, message = _grpc_status(lambda: client.get_model_metadata("identity", model_version=version))
    assert status == "StatusCode.INVALID_ARGUMENT", message


def test_a_batch_job_naming_a_non_ascii_version_is_a_400(plain):
    answer = call(f"{plain.url}/v2/batch/jobs", {"model": "identity", "version": "²", "input": "a.npz",
                                                  "output": "b.npz"})
    assert answer.status == 400 and "'version'" in answer.body["error"], answer


def test_seventy_dimensions_are_refused_by_name(plain, grpc_stub):
    shape = [1] * 70
    message = pb.ModelInferRequest(model_name="identity")
    message.inputs.add(name="x", datatype="FP32", shape=shape).contents.fp32_contents.append(0.0)
    with pytest.raises(grpc.RpcError) as caught:
        grpc_stub[0].ModelInfer(message, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    assert "70 dimensions" in caught.value.details()
    body = {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": [0.0]}]}
    answer = call(f"{plain.url}/v2/models/identity/infer", body)
    assert answer.status == 400 and "70 dimensions" in answer.body["error"], answer


def test_a_malformed_protobuf_is_invalid_argument(plain):
    with grpc.insecure_channel(plain.grpc_target) as channel:
        infer = channel.unary_unary(INFER)  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as caught:
            infer(b"\xff\xff\xff\xff", timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
        assert "not a valid protobuf" in caught.value.details()
        outgoing: queue.Queue = queue.Queue()
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")(iter(outgoing.get, None))
        outgoing.put(b"\x0a\xff\xff")
        with pytest.raises(grpc.RpcError) as caught:
            next(stream)
        outgoing.put(None)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value


@pytest.mark.parametrize("name, words", [
    ("file:²/model.onnx", "version folder"),
    ("file:1/mo\x00del.onnx", "control characters"),
    ("file:1/" + "a" * 300, "too long"),
    ("file:1/" + "/".join("d" * 17) + "/f", "too long"),
])
def test_upload_file_names_no_file_system_takes_are_a_400(plain, name, words):
    http = httpclient.InferenceServerClient(plain.url.removeprefix("http://"))
    with pytest.raises(InferenceServerException) as caught:
        http.load_model("named", files={name: b"x"})
    assert caught.value.status() == "400" and words in caught.value.message(), caught.value
    grpc_client = grpcclient.InferenceServerClient(plain.grpc_target)
    status, message = _grpc_status(lambda: grpc_client.load_model("named", files={name: b"x"}))
    assert status == "StatusCode.INVALID_ARGUMENT" and words in message, message
    assert call(f"{plain.url}/v2/models/named").status == 404


def test_a_name_that_is_both_file_and_folder_is_a_400(plain):
    files = {"file:1/model.onnx": b"x", "file:1/model.onnx/inner": b"y"}
    http = httpclient.InferenceServerClient(plain.url.removeprefix("http://"))
    with pytest.raises(InferenceServerException) as caught:
        http.load_model("clash", files=files)
    assert caught.value.status() == "400" and "both as a file and as a folder" in caught.value.message()
    grpc_client = grpcclient.InferenceServerClient(plain.grpc_target)
    status, message = _grpc_status(lambda: grpc_client.load_model("clash", files=files))
    assert status == "StatusCode.INVALID_ARGUMENT" and "both as a file and as a folder" in message, message


# --- hypothesis over gRPC: whatever the request, a client error is never INTERNAL or UNKNOWN ------

_CLIENT_SIDE = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE}
_DATATYPES = ["FP32", "FP16", "INT64", "INT8", "UINT8", "BOOL", "BYTES", "FP64", "BF16", "", "fp32", "X"]
_texts = st.one_of(st.sampled_from(["identity", "x", "y", "1", "²", ""]), st.text(max_size=12))


@st.composite
def infer_requests(draw) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=draw(_texts), model_version=draw(_texts), id=draw(_texts))
    for _ in range(draw(st.integers(0, 3))):
        tensor = message.inputs.add(name=draw(_texts), datatype=draw(st.sampled_from(_DATATYPES)),
                                    shape=draw(st.lists(st.integers(-2, 2**40), max_size=6)))
        kind = draw(st.sampled_from(["fp32", "int64", "bytes", "none"]))
        if kind == "fp32":
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=8)))
        elif kind == "int64":
            tensor.contents.int64_contents.extend(draw(st.lists(st.integers(-2**63, 2**63 - 1), max_size=8)))
        elif kind == "bytes":
            tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=8), max_size=4)))
    if draw(st.booleans()):
        message.raw_input_contents.extend(draw(st.lists(st.binary(max_size=32), max_size=3)))
    for name in draw(st.lists(_texts, max_size=2)):
        message.outputs.add(name=name)
    for key in draw(st.lists(st.sampled_from(["priority", "timeout", "sequence_id", "binary_data_output", "x"]),
                             max_size=2)):
        choice = draw(st.sampled_from(["int64_param", "bool_param", "string_param"]))
        value = {"int64_param": draw(st.integers(-2**63, 2**63 - 1)), "bool_param": draw(st.booleans()),
                 "string_param": draw(_texts)}[choice]
        setattr(message.parameters[key], choice, value)
    return message


@pytest.fixture(scope="module")
def grpc_stub(plain):
    with grpc.insecure_channel(plain.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel), channel


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(request=infer_requests())
def test_grpc_infer_never_answers_a_client_error_as_a_server_error(grpc_stub, request):
    stub, _ = grpc_stub
    try:
        stub.ModelInfer(request, timeout=30)
    except grpc.RpcError as error:
        assert error.code() in _CLIENT_SIDE, (error.code(), error.details(), request)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(body=st.binary(max_size=64))
def test_grpc_infer_survives_arbitrary_bytes(grpc_stub, body):
    _, channel = grpc_stub
    try:
        channel.unary_unary(INFER)(body, timeout=30)
    except grpc.RpcError as error:
        assert error.code() in _CLIENT_SIDE, (error.code(), error.details(), body)


def test_the_server_lives_after_the_fuzzing(plain):
    np.testing.assert_array_equal(_grpc_infer(plain).as_numpy("y"), np.zeros((2, 3), dtype=np.float32))
    assert plain.proc.poll() is None
