"""Request limits, deadlines, safe loading and fault isolation against one real mlserve process.

The repository holds misbehaving TorchScript models (one raises, one runs out of memory past two
rows, one spins for as long as its input says) and folders that must not load (a symlink out of
the repository, a pickle that would run code, an artifact over the size limit).
"""

from __future__ import annotations

import concurrent.futures
import socket
import time

import numpy as np
import pytest
import torch

from mlserve.examples import write_identity_onnx
from tests.server.fault_models import OutOfMemory, Raiser, Spinner, reference, write_model
from tests.server.http import call, infer_body, num_running, output, wait_for
from tests.server_process import MlserveProcess

MAX_BODY = 1 << 20
LIMITS_ENV = {
    "MLSERVE_SERVER_MAX_BODY_BYTES": str(MAX_BODY),
    "MLSERVE_LIMITS_MAX_TENSOR_ELEMENTS": "3000",
    "MLSERVE_LIMITS_MAX_BATCH_ROWS": "512",
    "MLSERVE_LIMITS_MAX_HEADER_BYTES": "4096",
    "MLSERVE_LIMITS_DEFAULT_TIMEOUT_S": "20",
    "MLSERVE_REGISTRY_MAX_ARTIFACT_BYTES": "200000",
}
MARKER = "pickle-ran"


class RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _write_repository(root, outside):
    write_identity_onnx(root / "identity" / "1" / "model.onnx", "FP32")
    write_model(root, "raiser", Raiser(), max_batch_size=8, delay_us=20000)
    # Warm-up at max_batch_size would (rightly) reject a model that runs out of memory there; this
    # one is meant to reach serving, so it warms up on one row only.
    write_model(root, "oom", OutOfMemory(), max_batch_size=8, delay_us=50000, extra="warmup = { batch_sizes = [1] }\n")
    write_model(root, "spinner", Spinner(), max_batch_size=0, extra="hang_timeout_us = 500000\n")
    write_model(root, "busy", Spinner(), max_batch_size=0)
    write_model(root, "brk", Spinner(), max_batch_size=0,
                extra="[traffic]\nbreaker = { consecutive_failures = 2, open_s = 60.0 }\n")
    write_identity_onnx(outside / "escape" / "1" / "model.onnx", "FP32")
    (root / "escape").symlink_to(outside / "escape")
    write_identity_onnx(outside / "lone.onnx", "FP32")
    (root / "linkfile" / "1").mkdir(parents=True)
    (root / "linkfile" / "1" / "model.onnx").symlink_to(outside / "lone.onnx")
    (root / "pickled" / "1").mkdir(parents=True)
    torch.save({"weights": RunsCode(str(outside / MARKER))}, str(root / "pickled" / "1" / "model.pt"))
    untrusted = (root / "raiser" / "model.toml").read_text().replace("trusted = true\n", "")
    (root / "pickled" / "model.toml").write_text(untrusted)
    write_identity_onnx(root / "huge" / "1" / "model.onnx", "FP32")
    (root / "huge" / "1" / "blob.bin").write_bytes(b"\0" * 300_000)


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    root, outside = tmp_path_factory.mktemp("repo"), tmp_path_factory.mktemp("outside")
    _write_repository(root, outside)
    proc = MlserveProcess(root, log_path=tmp_path_factory.mktemp("logs") / "mlserve.log", env=LIMITS_ENV)
    proc.outside = outside
    yield proc.wait_ready()
    code = proc.stop()
    assert code == 0, proc.log()


def _infer_url(server, model: str) -> str:
    return f"{server.url}/v2/models/{model}/infer"


def test_declared_huge_body_gets_413_before_it_is_read(limited):
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10737418240\r\n\r\n" + b"[" * 65536)
        started = time.monotonic()
        reply = sock.recv(65536).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply
    assert "over the limit of 1048576 bytes" in reply
    assert time.monotonic() - started < 5  # 64 KiB of 10 GiB were sent; the answer did not wait for more


def test_chunked_body_over_the_limit_gets_413(limited):
    chunks = iter([b'{"inputs": ['] + [b" " * 65536] * (MAX_BODY // 65536 + 1) + [b"]}"])
    answer = call(_infer_url(limited, "identity"), chunks)
    assert answer.status == 413 and "too large" in answer.body["error"]


def test_tensor_over_the_element_limit_gets_413(limited):
    answer = call(_infer_url(limited, "identity"), infer_body(np.zeros((1001, 3), np.float32)))
    assert answer.status == 413
    assert answer.body["error"] == "input 'x' has 3003 elements, over the limit of 3000"
    answer = call(_infer_url(limited, "identity"), infer_body(np.zeros((600, 1), np.float32)))
    assert answer.status == 413 and "600 rows, over the limit of 512" in answer.body["error"]


def test_oversized_header_is_refused(limited):
    answer = call(f"{limited.url}/v2/health/live", headers={"X-Filler": "a" * 6000})
    assert answer.status in (400, 431)
    assert call(f"{limited.url}/v2/health/live", headers={"X-Filler": "a" * 3000}).status == 200


def test_deadline_answers_504_and_the_request_never_runs(limited):
    """A request stuck behind a busy model is answered 504 at its deadline and leaves the queue."""
    batches_before = _batch_count(limited, "busy")
    busy = np.full((1, 3), 300_000, np.float32)  # 0.3 s to 3 s of spinning
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(call, _infer_url(limited, "busy"), infer_body(busy))
        wait_for(lambda: num_running(limited.url, "busy") == 1, "the first request to run")
        started = time.monotonic()
        late = call(_infer_url(limited, "busy"), infer_body(np.zeros((1, 3), np.float32), timeout=50_000))
        waited = time.monotonic() - started
        assert first.result().status == 200
    assert late.status == 504, late.body
    assert "timeout" in late.body["error"] and "deadline" in late.body["error"]
    assert waited < 0.25
    _assert_never_ran(limited, "busy", batches_before)


def _assert_never_ran(server, model: str, batches_before: float) -> None:
    """The queue is FIFO: once a later request is answered, a timed-out one would have run by then."""
    assert call(_infer_url(server, model), infer_body(np.zeros((1, 3), np.float32))).status == 200
    assert _batch_count(server, model) == batches_before + 2


def test_unknown_model_is_404_before_the_body_is_decoded(limited):
    """The model is looked up first: a body that would take long to decode is never parsed for it."""
    answer = call(_infer_url(limited, "nosuchmodel"), b"{ this is not JSON")
    assert answer.status == 404 and "nosuchmodel" in answer.body["error"], answer.body


def test_declared_shape_over_the_limit_is_413_before_data_is_read(limited):
    """Limits are checked from the declared shape: the data (here far too short) is never looked at."""
    body = {"inputs": [{"name": "x", "shape": [1_000_000, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}
    answer = call(_infer_url(limited, "identity"), body)
    assert answer.status == 413 and "elements" in answer.body["error"], answer.body


def test_a_deadline_that_passes_counts_against_the_version_in_its_breaker(limited):
    """Timeouts are outcomes: two requests past their deadline open a breaker of two failures."""
    from tests.server.http import metric_value

    busy = np.full((1, 3), 300_000, np.float32)  # 0.3 s to 3 s of spinning
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: call(_infer_url(limited, "brk"), infer_body(busy, timeout=1000)), range(2)))
    assert [a.status for a in answers] == [504, 504], [a.body for a in answers]
    wait_for(lambda: metric_value(limited.url, "mlserve_breaker_state", model="brk", version="1") == 2,
             "the breaker of brk/1 to open")


def test_bad_timeout_parameter_is_400(limited):
    answer = call(_infer_url(limited, "identity"), infer_body(np.zeros((1, 3), np.float32), timeout="soon"))
    assert answer.status == 400 and "'timeout'" in answer.body["error"]


def _batch_count(server, model: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = call(f"{server.url}/metrics").body
    for family in text_string_to_metric_families(text):
        if family.name == "mlserve_batch_requests":
            return sum(s.value for s in family.samples
                       if s.name.endswith("_count") and s.labels.get("model") == model)
    return 0.0


# --- Safe loading and path traversal ----------------------------------------------------------

def _index(server) -> dict[str, dict]:
    answer = call(f"{server.url}/v2/repository/index", b"")
    assert answer.status == 200
    return {row["name"]: row for row in answer.body}


def test_folders_that_escape_or_would_unpickle_or_are_too_big_do_not_load(limited):
    index = _index(limited)
    assert index["escape"]["state"] == "UNAVAILABLE" and "leaves the model repository" in index["escape"]["reason"]
    assert index["linkfile"]["state"] == "UNAVAILABLE"
    assert "outside the model repository" in index["linkfile"]["reason"]
    assert index["huge"]["state"] == "UNAVAILABLE" and "over the limit of 200000 bytes" in index["huge"]["reason"]
    assert index["pickled"]["state"] == "UNAVAILABLE" and "not trusted" in index["pickled"]["reason"]
    assert not (limited.outside / MARKER).exists(), "loading the repository ran code from a pickle"
    assert index["identity"]["state"] == "READY"


@pytest.mark.parametrize("path, status", [
    ("/v2/models/..%2F..%2Fetc%2Fpasswd", 404),
    ("/v2/models/%2e%2e/versions/1", 404),
    ("/v2/models/escape", 404),
    ("/v2/models/identity/versions/..%2F1", 400),  # not a version at all: a bad request
    ("/v2/models/identity/versions/-1", 400),
    ("/v2/models/%2Fetc%2Fpasswd/ready", 404),
])
def test_traversal_in_names_finds_nothing(limited, path, status):
    answer = call(limited.url + path)
    assert answer.status == status, (path, answer.body)
    assert set(answer.body) == {"error"} and "root:" not in answer.body["error"]


def test_traversal_in_infer_path_is_404(limited):
    answer = call(f"{limited.url}/v2/models/..%2Fescape/infer", infer_body(np.zeros((1, 3), np.float32)))
    assert answer.status == 404
    answer = call(f"{limited.url}/v2/models/linkfile/versions/1/infer", infer_body(np.zeros((1, 3), np.float32)))
    assert answer.status == 503 and "unavailable" in answer.body["error"]


# --- Fault isolation ---------------------------------------------------------------------------

def test_a_raising_model_fails_only_its_own_requests(limited):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bad = [pool.submit(call, _infer_url(limited, "raiser"), infer_body(-x)) for _ in range(4)]
        good = [pool.submit(call, _infer_url(limited, "identity"), infer_body(x)) for _ in range(8)]
        for future in bad:
            answer = future.result()
            assert answer.status == 500
            assert "model raiser/1 failed" in answer.body["error"] and "negative input" in answer.body["error"]
        for future in good:
            assert future.result().status == 200
            np.testing.assert_array_equal(output(future.result()), x)
    healthy = call(_infer_url(limited, "raiser"), infer_body(x))
    assert healthy.status == 200
    np.testing.assert_array_equal(output(healthy), reference(Raiser(), x))


def test_a_hanging_model_answers_504_and_gets_a_new_worker(limited):
    x = np.ones((1, 3), np.float32)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        started = time.monotonic()
        # 20 million iterations: many seconds however fast the JIT makes the loop.
        hung = pool.submit(call, _infer_url(limited, "spinner"), infer_body(np.full((1, 3), 2e7, np.float32)))
        time.sleep(0.1)
        others = [pool.submit(call, _infer_url(limited, "identity"), infer_body(x)) for _ in range(3)]
        for future in others:
            assert future.result().status == 200
        answer = hung.result()
    assert answer.status == 504, answer.body
    assert "model spinner/1 did not finish a batch within 0.5 s" in answer.body["error"]
    assert time.monotonic() - started < 5
    after = call(_infer_url(limited, "spinner"), infer_body(np.zeros((1, 3), np.float32)))
    assert after.status == 200
    np.testing.assert_array_equal(output(after), np.zeros((1, 3), np.float32))
    assert "worker abandoned and replaced" in limited.log()


def test_an_out_of_memory_batch_is_retried_in_halves(limited):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    answer = call(_infer_url(limited, "oom"), infer_body(x))
    assert answer.status == 200, answer.body
    np.testing.assert_array_equal(output(answer), reference(OutOfMemory(), x))
    assert "model oom/1 ran out of memory on 4 rows; retrying as two halves" in limited.log()
    # Single rows sent together are batched past two rows, split, and each gets its own answer.
    rows = [np.full((1, 3), i, np.float32) for i in range(6)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda r: call(_infer_url(limited, "oom"), infer_body(r)), rows))
    for row, answer in zip(rows, answers):
        assert answer.status == 200
        np.testing.assert_array_equal(output(answer), row * 2)


def test_admin_routes_refuse_odd_model_names(limited):
    answer = call(f"{limited.url}/v2/repository/models/..%2Fetc/load", method="POST")
    assert answer.status in (400, 404), answer.body
    answer = call(f"{limited.url}/admin/models/Bad%20Name/rollback", method="POST")
    assert answer.status == 400 and "not a valid model name" in answer.body["error"], answer.body


def test_the_server_default_deadline_applies_in_the_queue(test_repo, tmp_path):
    """[limits] default_timeout_s: a request that names no timeout and waits behind a busy model
    past the default gets 504 and never runs."""
    root = tmp_path / "models"
    write_model(root, "busy", Spinner(), max_batch_size=0)
    write_model(root, "brk", Spinner(), max_batch_size=0,
                extra="[traffic]\nbreaker = { consecutive_failures = 2, open_s = 60.0 }\n")
    config = tmp_path / "mlserve.toml"
    config.write_text("[limits]\ndefault_timeout_s = 0.1\n")
    server = MlserveProcess(root, "--config", str(config), log_path=tmp_path / "log").wait_ready()
    try:
        batches_before = _batch_count(server, "busy")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            # The first names a generous timeout of its own, so it runs 0.3-3 s past the default.
            first = pool.submit(call, _infer_url(server, "busy"),
                                infer_body(np.full((1, 3), 300_000, np.float32), timeout=30_000_000))
            wait_for(lambda: num_running(server.url, "busy") == 1, "the first request to run")
            late = call(_infer_url(server, "busy"), infer_body(np.zeros((1, 3), np.float32)))
            assert first.result().status == 200, first.result().body
        assert late.status == 504 and "timeout" in late.body["error"], late.body
        _assert_never_ran(server, "busy", batches_before)
    finally:
        assert server.stop() == 0
