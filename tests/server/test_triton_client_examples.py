"""The calls of Triton's own Python client examples (model control, health and metadata, simple
infer), made with tritonclient.http and tritonclient.grpc against a real server, with the checks
those examples make on the answers and on Triton's error text. Written for mlserve, not copied.

The repository holds Triton's `simple` model (OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1,
INT32 [-1, 16]) with a commented model.toml, a model with no model.toml, and a folder whose
model.toml is a symlink loop (a repository state the loader does not expect: an internal error).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from mlserve.examples import write_identity_onnx
from tests.server.http import call
from tests.server_process import free_port, serving

SIMPLE_TOML = b"""\
# Triton's `simple` example model: two INT32 inputs of 16, their sum and their difference.
max_batch_size = 8   # the batch a request may carry
"""


def _write_simple(path) -> None:
    import onnx
    from onnx import TensorProto, helper

    tensors = [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16]) for n in ("INPUT0", "INPUT1")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16]) for n in ("OUTPUT0", "OUTPUT1")]
    nodes = [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
             helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])]
    graph = helper.make_graph(nodes, "simple", tensors, outputs)
    path.parent.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    _write_simple(root / "simple" / "1" / "model.onnx")
    (root / "simple" / "model.toml").write_bytes(SIMPLE_TOML)
    write_identity_onnx(root / "plain" / "1" / "model.onnx", "FP32", width=4)
    (root / "looped" / "1").mkdir(parents=True)
    os.symlink("model.toml", root / "looped" / "model.toml")
    port = free_port()
    with serving(root, "--grpc-port", str(port), log_path=tmp_path_factory.mktemp("logs") / "log") as proc:
        proc.root, proc.grpc_target = root, f"127.0.0.1:{port}"
        yield proc


def _clients(server):
    return (httpclient.InferenceServerClient(server.url.removeprefix("http://")),
            grpcclient.InferenceServerClient(server.grpc_target))


def _max_batch_size(client, model: str) -> int:
    config = client.get_model_config(model)
    return config["max_batch_size"] if isinstance(client, httpclient.InferenceServerClient) \
        else config.config.max_batch_size


def _message(call_it) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call_it()
    return caught.value


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_control_example(server, protocol):
    """simple_{http,grpc}_model_control.py: index, load, a malformed override config, a good one that
    changes max_batch_size from 8 to 16, unload, and a wrong model name, each with the example's check.
    Beyond the example: the override never touches the repository, and a plain load goes back to it."""
    client = _clients(server)[protocol == "grpc"]
    index = client.get_model_repository_index()
    assert len(index if protocol == "http" else index.models) == 3  # one row per model folder
    client.load_model("simple")
    assert client.is_model_ready("simple")

    malformed = '"parameters": {"config": {{"max_batch_size": "16"}}}'
    assert "failed to load" in _message(lambda: client.load_model("simple", config=malformed)).message()

    client.load_model("simple", config='{"max_batch_size":"16"}')
    assert _max_batch_size(client, "simple") == 16
    assert (server.root / "simple" / "model.toml").read_bytes() == SIMPLE_TOML
    client.load_model("simple")
    assert _max_batch_size(client, "simple") == 8

    client.unload_model("simple")
    assert not client.is_model_ready("simple")
    client.load_model("simple")

    wrong = _message(lambda: client.load_model("wrong_model_name")).message()
    assert "failed to load 'wrong_model_name'" in wrong and str(server.root) not in wrong


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_override_on_a_model_without_model_toml_writes_nothing(server, protocol):
    client = _clients(server)[protocol == "grpc"]
    default = _max_batch_size(client, "plain")
    client.load_model("plain", config=json.dumps({"max_batch_size": 8}))
    assert _max_batch_size(client, "plain") == 8
    assert sorted(p.name for p in (server.root / "plain").iterdir()) == ["1"]
    assert client.is_model_ready("plain")
    client.unload_model("plain")  # an unload forgets the override too
    client.load_model("plain")
    assert _max_batch_size(client, "plain") == default


def test_unknown_model_in_tritons_words_with_mlserves_statuses(server):
    """simple_{http,grpc}_health_metadata.py and the infer examples look for "Request for unknown model"."""
    for client in _clients(server):
        for read in (client.get_model_metadata, client.get_model_config):
            found = _message(lambda read=read: read("wrong_model_name")).message()
            assert found.startswith("Request for unknown model: 'wrong_model_name' is not found")
        versioned = _message(lambda client=client: client.get_model_metadata("simple", model_version="99")).message()
        assert versioned.startswith("Request for unknown model: 'simple' version 99 is not found")
    http, grpc = _clients(server)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.ones((1, 16), np.int32))
    assert _message(lambda: http.infer("wrong_model_name", inputs)).message().startswith("Request for unknown model")
    answer = call(f"{server.url}/v2/models/wrong_model_name")
    assert answer.status == 404 and answer.body["error"].startswith("Request for unknown model")
    failed = call(f"{server.url}/v2/repository/models/wrong_model_name/load", {})
    assert failed.status == 404 and str(server.root) not in failed.body["error"]
    assert _message(lambda: grpc.get_model_metadata("nope")).status() == "StatusCode.NOT_FOUND"


def test_simple_infer_example(server):
    """simple_{http,grpc}_infer_client.py: the sum and the difference come back for both protocols."""
    a, b = np.arange(16, dtype=np.int32).reshape(1, 16), np.ones((1, 16), np.int32)
    for module, client in zip((httpclient, grpcclient), _clients(server)):
        inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = client.infer("simple", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_unload_dependents_is_advertised_and_taken(server):
    http, grpc = _clients(server)
    assert "model_repository(unload_dependents)" in http.get_server_metadata()["extensions"]
    assert "model_repository(unload_dependents)" in grpc.get_server_metadata().extensions
    for client in (http, grpc):
        client.unload_model("plain", unload_dependents=True)
        assert not client.is_model_ready("plain")
        client.load_model("plain")
    refused = call(f"{server.url}/v2/repository/models/plain/unload", {"parameters": {"cascade": True}})
    assert refused.status == 400 and "cascade" in refused.body["error"]
    assert http.is_model_ready("plain")


def test_unimplemented_grpc_calls_answer_quietly(server):
    _, grpc = _clients(server)
    before = len(server.log())
    for ask in (grpc.get_system_shared_memory_status, grpc.get_cuda_shared_memory_status,
                grpc.get_trace_settings, grpc.get_log_settings):
        assert _message(ask).status() == "StatusCode.UNIMPLEMENTED"
    assert grpc.is_server_live()  # a later call is answered, so every earlier one has been handled
    written = server.log()[before:]
    assert "Traceback" not in written and "NotImplementedError" not in written and " ERROR " not in written


def test_an_internal_error_on_a_grpc_load_names_the_rpc(server):
    _, grpc = _clients(server)
    failed = _message(lambda: grpc.load_model("looped"))
    assert failed.status() == "StatusCode.INTERNAL" and "req_id" in failed.message()
    lines = [line for line in server.log().splitlines() if "internal error on gRPC" in line]
    assert lines and "RepositoryModelLoad" in lines[-1] and "/v2/repository" not in lines[-1]


def test_content_type_is_taken_where_it_changes_nothing(server):
    """MLServer's and KServe's codecs tag tensors with `content_type`; "np" (and "str" on BYTES) say
    what mlserve does anyway, another value asks for a decoding it does not do: a 400 naming it."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    def body(input_type, request_type=None):
        tensor = {"shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
        inputs = [{"name": n, **tensor, "parameters": {"content_type": input_type}} for n in ("INPUT0", "INPUT1")]
        return {"inputs": inputs, **({"parameters": {"content_type": request_type}} if request_type else {})}

    url = f"{server.url}/v2/models/simple/infer"
    taken = call(url, body("np", "np"))
    assert taken.status == 200 and taken.body["outputs"][0]["data"] == [2 * i for i in range(16)]
    for refused, what in ((body("pd"), "'pd'"), (body("str"), "'str'"), (body("np", "pd"), "'pd'")):
        answer = call(url, refused)
        assert answer.status == 400 and "content_type" in answer.body["error"] and what in answer.body["error"]

    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_target))
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        tensor.contents.int_contents.extend(range(16))
        tensor.parameters["content_type"].string_param = "np"
    assert np.frombuffer(stub.ModelInfer(request).raw_output_contents[0], np.int32).tolist() == \
        [2 * i for i in range(16)]
    request.inputs[0].parameters["content_type"].string_param = "base64"
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'base64'" in caught.value.details()
