"""End to end: a real mlserve process, tritonclient (sync and asyncio) and plain HTTP; outputs are
checked against onnxruntime run directly on the same files."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.batching.conftest import SLOW_WIDTH
from tests.server.http import num_running, wait_for


def _client(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)


def _input(x: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


def _samples(server, family: str, model: str) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            for s in fam.samples:
                if s.labels.get("model") == model:
                    out[(s.name, s.labels["version"])] = s.value
    return out


def _reference(repo, model: str, version: int, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(repo / model / str(version) / "model.onnx")).run(None, {"x": x})[0]


def _slow_rows(value: float, rows: int = 1) -> np.ndarray:
    return np.full((rows, SLOW_WIDTH), value, dtype=np.float32)


def test_concurrent_clients_get_their_own_rows_and_batches_form(batching_server, batching_repo):
    rng = np.random.default_rng(11)
    requests = [rng.standard_normal((int(rng.integers(1, 9)), 768), dtype=np.float32) for _ in range(300)]
    session = ort.InferenceSession(str(batching_repo / "batched" / "1" / "model.onnx"))

    async def main():
        client = aioclient.InferenceServerClient(batching_server.url.removeprefix("http://"), conn_limit=128)
        gate = asyncio.Semaphore(128)

        async def one(i: int, x: np.ndarray) -> np.ndarray:
            inp = aioclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=i % 3 != 0)
            async with gate:
                result = await client.infer("batched", [inp], request_id=f"r{i}")
            assert result.get_response()["id"] == f"r{i}"
            return result.as_numpy("y")

        try:
            return await asyncio.gather(*(one(i, x) for i, x in enumerate(requests)))
        finally:
            await client.close()

    outputs = asyncio.run(main())
    for x, got in zip(requests, outputs):
        assert got.shape == (len(x), 10)
        np.testing.assert_allclose(got, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
    sizes = _samples(batching_server, "mlserve_batch_size", "batched")
    num_batches = sizes[("mlserve_batch_size_count", "1")]
    assert sizes[("mlserve_batch_size_sum", "1")] == sum(len(x) for x in requests)
    mean_rows_per_batch = sizes[("mlserve_batch_size_sum", "1")] / num_batches
    mean_rows_per_request = np.mean([len(x) for x in requests])
    assert num_batches < len(requests) and mean_rows_per_batch > mean_rows_per_request, (
        f"{len(requests)} concurrent requests ran as {num_batches:.0f} batches"
    )


def test_a_lone_request_is_answered_well_under_the_delay(batching_server):
    client = _client(batching_server)  # model "lone" has a 1 s max_queue_delay_us
    x = np.ones((1, 768), dtype=np.float32)
    client.infer("lone", [_input(x)])  # first use
    elapsed = []
    for _ in range(5):
        started = time.monotonic()
        client.infer("lone", [_input(x)])
        elapsed.append(time.monotonic() - started)
    assert min(elapsed) < 0.1 and max(elapsed) < 0.5, f"lone requests took {elapsed} with a 1 s delay"


def _send_at(client_factory, results: dict, key: str, value: float, priority: int = 0, timeout=None, rows: int = 1):
    """One request to "slowprio" (no batching: one request per run) from its own thread."""

    def run():
        started = time.monotonic()
        try:
            x = _slow_rows(value, rows)
            out = client_factory().infer("slowprio", [_input(x)], priority=priority, timeout=timeout)
            results[key] = ("ok", time.monotonic(), float(out.as_numpy("y")[0, 0]), time.monotonic() - started)
        except InferenceServerException as exc:
            results[key] = ("error", time.monotonic(), exc, time.monotonic() - started)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_queued(server, model: str, count: int, timeout: float = 10.0) -> None:
    """Until /metrics shows `count` requests waiting in the model's queue."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        depth = _samples(server, "mlserve_queue_depth", model).get(("mlserve_queue_depth", "1"), 0)
        if depth >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{model}: {count} requests never queued")


def test_priorities_order_the_queue(batching_server):
    results: dict = {}
    factory = lambda: _client(batching_server)  # noqa: E731  one client per thread
    threads = [_send_at(factory, results, "busy", 0.0, rows=24)]  # holds the engine while the rest queue
    wait_for(lambda: num_running(batching_server.url, "slowprio") == 1, "the busy request to run")
    for i, (key, priority) in enumerate([("low1", 2), ("low2", 2), ("high1", 1), ("high2", 1)]):
        threads.append(_send_at(factory, results, key, float(i + 1), priority=priority))
        _wait_queued(batching_server, "slowprio", i + 1)
    for thread in threads:
        thread.join(60)
    assert all(r[0] == "ok" for r in results.values()), results
    assert results["low1"][2] == 1.0 and results["high2"][2] == 4.0  # each got its own row back (y = x)
    finished = sorted(["low1", "low2", "high1", "high2"], key=lambda k: results[k][1])
    assert finished == ["high1", "high2", "low1", "low2"]


def test_a_request_past_its_timeout_gets_504(batching_server):
    results: dict = {}
    factory = lambda: _client(batching_server)  # noqa: E731
    busy = _send_at(factory, results, "busy", 0.0, rows=24)
    wait_for(lambda: num_running(batching_server.url, "slowprio") == 1, "the busy request to run")
    late = _send_at(factory, results, "late", 1.0, timeout=30_000)  # 30 ms, in microseconds as in Triton
    late.join(60)
    busy.join(60)
    kind, _, error, waited = results["late"]
    assert kind == "error" and "timeout" in str(error), results["late"]
    assert error.status() in ("504", 504) or "504" in str(error.status())
    assert results["busy"][0] == "ok"
    assert waited < 5.0


def _post(url: str, body: bytes) -> tuple[int, dict, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_a_full_queue_answers_429_with_retry_after(batching_server):
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, SLOW_WIDTH], "datatype": "FP32",
                                   "data": [0.5] * SLOW_WIDTH}]}).encode()
    url = f"{batching_server.url}/v2/models/slowfull/infer"
    answers: list = []
    threads = [threading.Thread(target=lambda: answers.append(_post(url, body))) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    refused = [a for a in answers if a[0] == 429]
    served = [a for a in answers if a[0] == 200]
    assert len(refused) + len(served) == 10, [a[0] for a in answers]
    assert refused, "10 requests at a queue of 2 should overflow it"
    assert len(served) >= 3, "one running and two queued requests must be served"
    for _, headers, payload in refused:
        assert int(headers["Retry-After"]) >= 1
        assert "queue is full" in payload["error"]
    for _, _, payload in served:
        assert payload["outputs"][0]["data"][:3] == [0.5, 0.5, 0.5]


def test_the_cache_answers_repeats_without_the_batcher_and_per_version(batching_server, batching_repo):
    client = _client(batching_server)
    x = np.random.default_rng(5).standard_normal((2, 768), dtype=np.float32)
    first = client.infer("cached", [_input(x)], model_version="1").as_numpy("y")
    again = client.infer("cached", [_input(x, binary=False)], model_version="1").as_numpy("y")
    expected_v1 = _reference(batching_repo, "cached", 1, x)
    np.testing.assert_allclose(first, expected_v1, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(again, first)
    hits = _samples(batching_server, "mlserve_cache_hits", "cached")
    misses = _samples(batching_server, "mlserve_cache_misses", "cached")
    batches = _samples(batching_server, "mlserve_batch_size", "cached")
    assert hits[("mlserve_cache_hits_total", "1")] == 1 and misses[("mlserve_cache_misses_total", "1")] == 1
    assert batches[("mlserve_batch_size_count", "1")] == 1, "a cache hit reached the batcher"
    other = client.infer("cached", [_input(x)], model_version="2").as_numpy("y")
    expected_v2 = _reference(batching_repo, "cached", 2, x)
    assert not np.allclose(expected_v1, expected_v2)
    np.testing.assert_allclose(other, expected_v2, rtol=1e-5, atol=1e-5)
    assert _samples(batching_server, "mlserve_cache_misses", "cached")[("mlserve_cache_misses_total", "2")] == 1


@pytest.mark.parametrize("params, needle", [({"priority": 5}, "priority"), ({"timeout": -3}, "timeout"),
                                            ({"priority": "high"}, "priority")])
def test_bad_schedule_parameters_get_400(batching_server, params, needle):
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 768], "datatype": "FP32", "data": [0.0] * 768}],
                       "parameters": params}).encode()
    status, _, payload = _post(f"{batching_server.url}/v2/models/batched/infer", body)
    assert status == 400 and needle in payload["error"], payload
