"""Model upload through Triton's load API (`parameters.config`, `file:<version>/<name>`), over HTTP
and gRPC, against a real server: new versions serve through the hot swap with no failed request,
and a broken artifact or config is refused with the reason while the old version keeps serving."""

from __future__ import annotations

import base64
import hashlib
import json
import threading

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from mlserve.examples import write_identity_onnx, write_mlp_onnx
from tests.server.http import call
from tests.server_process import free_port, serving


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("artifacts")
    for seed in (1, 2, 3):
        write_mlp_onnx(folder / f"mlp{seed}.onnx", seed=seed)
    write_identity_onnx(folder / "identity.onnx", "FP32", width=4)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, artifacts):
    root = tmp_path_factory.mktemp("repo")
    (root / "up" / "1").mkdir(parents=True)
    (root / "up" / "1" / "model.onnx").write_bytes((artifacts / "mlp1.onnx").read_bytes())
    port = free_port()
    with serving(root, "--grpc-port", str(port), log_path=tmp_path_factory.mktemp("logs") / "log") as proc:
        proc.root, proc.grpc_target = root, f"127.0.0.1:{port}"
        yield proc


def _http(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"), connection_timeout=120,
                                            network_timeout=120)


def _infer_mlp(client, x: np.ndarray, version: str = "") -> tuple[str, np.ndarray]:
    return _infer_mlp_model(client, "up", x, version)


def _infer_mlp_model(client, model: str, x: np.ndarray, version: str = "") -> tuple[str, np.ndarray]:
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = client.infer(model, [inp], model_version=version)
    return result.get_response()["model_version"], result.as_numpy("y")


def _reference(path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path)).run(None, {"x": x})[0]


def test_upload_serves_the_new_version_with_no_failed_request(server, artifacts):
    x = np.random.default_rng(0).standard_normal((2, 768), dtype=np.float32)
    stop, outcomes = threading.Event(), []

    def load() -> None:
        client = _http(server)
        while not stop.is_set():
            try:
                outcomes.append(_infer_mlp(client, x)[0])
            except InferenceServerException as error:
                outcomes.append(error)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        content = (artifacts / "mlp2.onnx").read_bytes()
        _http(server).load_model("up", files={"file:2/model.onnx": content})
        assert _infer_mlp(_http(server), x)[0] == "2"
    finally:
        stop.set()
        worker.join(60)
    assert outcomes and not [o for o in outcomes if isinstance(o, Exception)]
    assert set(outcomes) <= {"1", "2"}
    np.testing.assert_allclose(_infer_mlp(_http(server), x)[1], _reference(artifacts / "mlp2.onnx", x),
                               rtol=1e-5, atol=1e-5)
    sums = (server.root / "up" / "2" / "SHA256SUMS").read_text().splitlines()
    marker = (server.root / "up" / "2" / "mlserve-upload.json").read_bytes()
    assert sums == [f"{hashlib.sha256(marker).hexdigest()}  mlserve-upload.json",
                    f"{hashlib.sha256(content).hexdigest()}  model.onnx"]


def test_broken_artifact_is_refused_and_the_old_version_serves(server):
    x = np.ones((1, 768), np.float32)
    before = _infer_mlp(_http(server), x)
    with pytest.raises(InferenceServerException) as excinfo:
        _http(server).load_model("up", files={"file:9/model.onnx": b"not an onnx file"})
    assert "refused, nothing changed" in excinfo.value.message() and "version 9" in excinfo.value.message()
    assert not (server.root / "up" / "9").exists()
    after = _infer_mlp(_http(server), x)
    assert after[0] == before[0] and np.array_equal(after[1], before[1])
    index = call(f"{server.url}/v2/repository/index", {"reload": False}).body
    assert [row["version"] for row in index if row["name"] == "up"] == [before[0]]


@pytest.mark.parametrize("parameters, text", [
    ({"file:1/../escape.onnx": "AAAA"}, "not a plain relative file path"),
    ({"file:x/model.onnx": "AAAA"}, "version folder"),
    ({"file:7/model.onnx": "***"}, "not valid base64"),
    ({"shiny": "1"}, "'shiny'"),
    ({"config": '{"sequence_batching": {}}'}, "sequence_batching not supported"),
    ({"config": '{"max_batch_size": "many"}'}, "not a Triton ModelConfig"),
    ({"config": '{"name": "other"}'}, "names model 'other'"),
    ({"file:99999999999999999999999/model.onnx": "AAAA"}, "version folder"),
    ({"config": '{"parameters": {"intra_op_threads": {"string_value": "2000"}}}'}, "intra_op_threads must lie in 0..256"),
    ({"config": '{"parameters": {"intra_op_threads": {"string_value": "²"}}}'}, "must be a whole number"),
    ({"config": '{"instance_group": [{"count": 100000, "kind": "KIND_CPU"}]}'}, "instances must lie in 1..64"),
    ({"config": '{"dynamic_batching": {"default_queue_policy": {"max_queue_size": 100000000}}}'},
     "max_queue_size must lie in 1..1000000"),
    ({"file:1/mlserve-upload.json": "AAAA"}, "not a plain relative file path"),
    ({"file:1/model.onnx": "AAAA"}, "already has version 1"),
])
def test_bad_uploads_are_4xx_with_the_reason(server, parameters, text):
    toml = server.root / "up" / "model.toml"
    toml_before = toml.read_bytes() if toml.exists() else None
    answer = call(f"{server.url}/v2/repository/models/up/load", {"parameters": parameters})
    expected = 409 if "already has" in text else 400  # a version that exists is a conflict
    assert answer.status == expected and text in answer.body["error"], answer.body
    assert (toml.read_bytes() if toml.exists() else None) == toml_before and not (server.root / "up" / "7").exists()


def test_config_override_applies_and_a_config_that_breaks_loading_is_taken_back(server):
    config = {"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": 300}}
    _http(server).load_model("up", config=json.dumps(config))
    shown = _http(server).get_model_config("up")
    assert shown["max_batch_size"] == 4 and shown["dynamic_batching"]["max_queue_delay_microseconds"] == 300
    assert not (server.root / "up" / "model.toml").exists()  # held for the load, never written
    wrong = {"input": [{"name": "x", "data_type": "TYPE_INT64", "dims": [768]}]}
    with pytest.raises(InferenceServerException) as excinfo:
        _http(server).load_model("up", config=json.dumps(wrong))
    assert "refused, nothing changed" in excinfo.value.message()
    assert not (server.root / "up" / "model.toml").exists()
    assert _http(server).get_model_config("up")["max_batch_size"] == 4
    assert _infer_mlp(_http(server), np.ones((1, 768), np.float32))[1].shape == (1, 10)


def test_grpc_upload_of_a_new_model(server, artifacts):
    client = grpcclient.InferenceServerClient(server.grpc_target)
    config = {"name": "fresh", "platform": "onnxruntime_onnx", "max_batch_size": 8,
              "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
              "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [4]}]}
    client.load_model("fresh", config=json.dumps(config),
                      files={"file:1/model.onnx": (artifacts / "identity.onnx").read_bytes()})
    assert client.is_model_ready("fresh")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    inp = grpcclient.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer("fresh", [inp]).as_numpy("y"), x)
    with pytest.raises(InferenceServerException) as excinfo:
        client.load_model("fresh", files={"file:1/model.onnx": (artifacts / "identity.onnx").read_bytes()})
    assert excinfo.value.status() == "StatusCode.ALREADY_EXISTS" and "already has version 1" in excinfo.value.message()
    with pytest.raises(InferenceServerException) as excinfo:
        client.load_model("broken_new", files={"file:1/model.onnx": b"garbage"})
    assert excinfo.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert not (server.root / "broken_new").exists()
    assert "broken_new" not in [m["name"] for m in client.get_model_repository_index(as_json=True)["models"]]


def test_push_command_writes_a_version_a_running_server_loads(server, artifacts, tmp_path):
    import subprocess
    import sys

    from tests.server_process import ROOT

    def push(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mlserve", "push", "--models", str(server.root), *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    config = tmp_path / "model.toml"
    config.write_text("max_batch_size = 16\n")
    done = push("--name", "pushed", str(artifacts / "mlp3.onnx"), "--config", str(config))
    assert done.returncode == 0, done.stderr
    written = server.root / "pushed" / "1"
    assert (written / "mlp3.onnx").is_file() and (written / "SHA256SUMS").is_file()
    again = push("--name", "pushed", str(artifacts / "mlp3.onnx"), "--version", "1")
    assert again.returncode == 2 and "already has version 1" in again.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("max_batch_size = 'many'\n")
    refused = push("--name", "pushed", str(artifacts / "mlp3.onnx"), "--config", str(bad))
    assert refused.returncode == 2 and "max_batch_size" in refused.stderr
    assert not (server.root / "pushed" / "2").exists()
    _http(server).load_model("pushed")
    x = np.ones((1, 768), np.float32)
    inp = httpclient.InferInput("x", [1, 768], "FP32")
    inp.set_data_from_numpy(x)
    got = _http(server).infer("pushed", [inp]).as_numpy("y")
    np.testing.assert_allclose(got, _reference(artifacts / "mlp3.onnx", x), rtol=1e-5, atol=1e-5)
    assert _http(server).get_model_config("pushed")["max_batch_size"] == 16


def _race(*uploads) -> list:
    """Send the uploads at the same moment from one thread each: [(status, body)] in order."""
    barrier, answers = threading.Barrier(len(uploads)), [None] * len(uploads)

    def send(n: int, url: str, parameters: dict) -> None:
        barrier.wait()
        answer = call(url, {"parameters": parameters}, timeout=120)
        answers[n] = (answer.status, answer.body)

    threads = [threading.Thread(target=send, args=(n, *u)) for n, u in enumerate(uploads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    return answers


def test_racing_uploads_to_a_new_model_keep_the_one_that_loaded(server, artifacts):
    """A broken and a good upload race into a model that does not exist yet: the broken one's
    rollback takes back only its own version, so the good one keeps its folder and serves."""
    url = f"{server.url}/v2/repository/models/raced/load"
    good = {"file:2/model.onnx": base64.b64encode((artifacts / "mlp1.onnx").read_bytes()).decode()}
    broken = {"file:1/model.onnx": base64.b64encode(b"not an onnx file").decode()}
    (ok_status, ok_body), (bad_status, bad_body) = _race((url, good), (url, broken))
    assert ok_status == 200 and bad_status == 400, (ok_body, bad_body)
    assert (server.root / "raced" / "2" / "model.onnx").is_file() and not (server.root / "raced" / "1").exists()
    version, _ = _infer_mlp_model(_http(server), "raced", np.ones((1, 768), np.float32))
    assert version == "2"


def test_racing_uploads_of_one_version_one_wins_and_the_other_is_409(server, artifacts):
    url = f"{server.url}/v2/repository/models/twice/load"
    contents = [(artifacts / f"mlp{n}.onnx").read_bytes() for n in (1, 2)]
    answers = _race(*((url, {"file:1/model.onnx": base64.b64encode(c).decode()}) for c in contents))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 409], answers
    winner = contents[[status for status, _ in answers].index(200)]
    folder = server.root / "twice" / "1"
    assert (folder / "model.onnx").read_bytes() == winner
    assert f"{hashlib.sha256(winner).hexdigest()}  model.onnx" in (folder / "SHA256SUMS").read_text().splitlines()
    x = np.ones((1, 768), np.float32)
    np.testing.assert_allclose(_infer_mlp_model(_http(server), "twice", x)[1],
                               ort.InferenceSession(winner).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
