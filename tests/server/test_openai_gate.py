"""Limits that hold on every /v1 route: API keys refused in OpenAI's error shape, the server's
max_generation_tokens for chats that name no max_tokens, the default deadline, a client that leaves
mid-stream (cancelled, not logged as an error), and traffic splits between two LLM versions."""

from __future__ import annotations

import concurrent.futures
import functools
import shutil
import socket

import openai
import pytest

from mlserve.examples_llm import LLM_TOML
from tests.server.openai_helpers import client, wait_for_idle
from tests.server.test_auth import make_key
from tests.server_process import MlserveProcess


def _server(root, toml: str, *args: str) -> MlserveProcess:
    config = root / "mlserve.toml"
    config.write_text(toml)
    return MlserveProcess(root / "models", "--config", str(config), *args, log_path=root / "log").wait_ready()


@pytest.fixture(scope="module")
def guarded(llm_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("guarded")
    shutil.copytree(llm_server.repo / "tiny-llama", root / "models" / "tiny-llama")
    keys_file = root / "keys.json"
    tokens = {"reader": make_key(keys_file, "reader", "--scopes", "infer", "--priority", "1"),
              "ops": make_key(keys_file, "ops", "--scopes", "admin")}
    server = _server(root, "[limits]\nmax_generation_tokens = 6\n", "--auth-keys", str(keys_file))
    server.tokens = tokens
    yield server
    assert server.stop() == 0, server.log()


def _api(server, name: str | None) -> openai.OpenAI:
    key = server.tokens[name] if name else "not-a-key"
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def test_auth_refusals_come_in_openai_shape(guarded):
    with pytest.raises(openai.AuthenticationError) as caught:
        _api(guarded, None).models.list()
    assert caught.value.body["type"] == "authentication_error" and "not valid" in caught.value.body["message"]
    with pytest.raises(openai.PermissionDeniedError) as caught:
        _api(guarded, "ops").completions.create(model="tiny-llama", prompt="hi", max_tokens=2)
    assert "'infer' scope" in caught.value.body["message"]
    assert _api(guarded, "reader").completions.create(model="tiny-llama", prompt="hi", max_tokens=2).choices


def test_chat_without_max_tokens_stops_at_the_server_cap(guarded):
    chat = _api(guarded, "reader").chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "hi"}], temperature=0,
        extra_body={"ignore_eos": True})
    assert chat.usage.completion_tokens == 6 and chat.choices[0].finish_reason == "length"


def test_the_default_deadline_applies_to_generation(llm_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("deadline")
    shutil.copytree(llm_server.repo / "tiny-llama", root / "models" / "tiny-llama")
    server = _server(root, "[limits]\ndefault_timeout_s = 0.05\n")
    try:
        with pytest.raises(openai.APIStatusError) as caught:
            client(server).completions.create(model="tiny-llama", prompt="hi", max_tokens=400, temperature=0,
                                              extra_body={"ignore_eos": True})
        assert caught.value.status_code == 504 and "deadline" in caught.value.body["message"]
        wait_for_idle(server, "tiny-llama")  # the cancelled sequence gave its blocks back
    finally:
        assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log()


def test_a_client_that_leaves_mid_stream_is_cancelled_quietly(llm_server):
    body = (b'{"model": "tiny-llama", "prompt": "hello", "max_tokens": 480, "stream": true, '
            b'"ignore_eos": true, "temperature": 0}')
    with socket.create_connection(("127.0.0.1", llm_server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert b"200 OK" in sock.recv(4096)
    wait_for_idle(llm_server, "tiny-llama")
    assert "internal error" not in llm_server.log() and "Traceback" not in llm_server.log()


def test_a_split_between_two_llm_versions_serves_every_stream(llm_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    models = root / "models" / "tiny-llama"
    for version in ("1", "2"):
        shutil.copytree(llm_server.repo / "tiny-llama" / "1", models / version)
    (models / "model.toml").write_text('version_policy = { all = true }\n' + LLM_TOML
                                       + '[traffic]\nsplit = { "1" = 50, "2" = 50 }\n')
    server = _server(root, "")
    try:
        api = client(server)

        def stream(i: int) -> str:
            chunks = list(api.completions.create(model="tiny-llama", prompt=f"request {i}", max_tokens=8,
                                                 stream=True, temperature=0, extra_body={"ignore_eos": True}))
            assert chunks[-1].choices[0].finish_reason == "length"
            return "".join(c.choices[0].text for c in chunks)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert len(list(pool.map(stream, range(40)))) == 40
        served = {v: metric_version(server, v) for v in ("1", "2")}
        assert served["1"] > 5 and served["2"] > 5 and served["1"] + served["2"] == 40
    finally:
        assert server.stop() == 0, server.log()


def metric_version(server, version: str) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "mlserve_requests_total" and s.labels.get("version") == version
               and s.labels.get("protocol") == "openai")


def _poisoned_copy(source, target) -> None:
    """A copy of a tiny-llama whose output layer is NaN: it loads, and every sampled step fails."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = load_file(target / "model.safetensors")
    weights["lm_head.weight"].fill_(float("nan"))
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})


def test_a_failing_version_falls_back_without_a_failed_stream(llm_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("breaker")
    models = root / "models" / "tiny-llama"
    shutil.copytree(llm_server.repo / "tiny-llama" / "1", models / "1")
    _poisoned_copy(llm_server.repo / "tiny-llama" / "1", models / "2")
    (models / "model.toml").write_text('version_policy = { all = true }\n' + LLM_TOML
                                       + '[traffic]\nfallback = "previous"\n')
    server = _server(root, "")
    try:
        api = client(server)

        def stream(i: int) -> int:
            chunks = list(api.completions.create(model="tiny-llama", prompt=f"request {i}", max_tokens=8,
                                                 stream=True, temperature=1.0, seed=i,
                                                 extra_body={"ignore_eos": True}))
            assert chunks[-1].choices[0].finish_reason == "length"
            return sum(1 for c in chunks if c.choices[0].text or c.choices[0].finish_reason)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert all(n >= 1 for n in pool.map(stream, range(40)))
        assert metric_labels(server, "mlserve_breaker_state", version="2") == 2  # open
        assert metric_labels(server, "mlserve_fallback_requests_total", version="2") > 0
        assert metric_version(server, "1") == 40 and metric_version(server, "2") == 0
    finally:
        assert server.stop() == 0, server.log()


def metric_labels(server, name: str, **labels: str) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_generations_reach_the_prediction_log(llm_server, tmp_path_factory):
    import json
    import time

    root = tmp_path_factory.mktemp("predlog")
    shutil.copytree(llm_server.repo / "tiny-llama", root / "models" / "tiny-llama")
    logs = root / "predictions"
    server = _server(root, f'[monitor]\nprediction_log = "{logs}"\nlog_sample_rate = 1.0\n')
    try:
        answer = client(server).completions.create(model="tiny-llama", prompt=[5, 6, 7, 8], max_tokens=6,
                                                    temperature=0, logprobs=0, extra_body={"ignore_eos": True})
        req_id = answer.id.removeprefix("cmpl-")
        deadline, line = time.monotonic() + 30, None
        while line is None and time.monotonic() < deadline:
            path = logs / "predictions.jsonl"
            text = path.read_text() if path.is_file() else ""
            line = next((json.loads(s) for s in text.splitlines() if req_id in s), None)
            time.sleep(0.05)
        assert line is not None, "no prediction log line for the generation"
        assert line["model"] == "tiny-llama" and line["version"] == "1"
        assert line["outputs"]["output_tokens"] == [[6.0]]
        mean = sum(answer.choices[0].logprobs.token_logprobs) / 6
        assert abs(line["outputs"]["mean_logprob"][0][0] - mean) < 1e-4
    finally:
        assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log()


def _stream_until(server, stop, done: list[int], failures: list[str]) -> None:
    """Short streams one after another until `stop`; counts the good ones, keeps every failure."""
    api = client(server)
    while not stop.is_set():
        try:
            chunks = list(api.completions.create(model="tiny-llama", prompt="canary", max_tokens=4, stream=True,
                                                 temperature=1.0, extra_body={"ignore_eos": True}))
            assert chunks[-1].choices[0].finish_reason == "length"
            done[0] += 1
        except Exception as exc:  # noqa: BLE001 - every failure is reported by the test
            failures.append(repr(exc))


@pytest.mark.parametrize("poisoned, outcome", [(False, "promoted"), (True, "rolled_back")])
def test_a_canary_rollout_under_streaming_load_fails_no_stream(llm_server, tmp_path_factory, poisoned, outcome):
    import threading
    import time

    from tests.server.http import call

    root = tmp_path_factory.mktemp("rollout")
    models = root / "models" / "tiny-llama"
    shutil.copytree(llm_server.repo / "tiny-llama" / "1", models / "1")
    (_poisoned_copy if poisoned else shutil.copytree)(llm_server.repo / "tiny-llama" / "1", models / "2")
    (models / "model.toml").write_text('version_policy = { all = true }\n' + LLM_TOML
                                       + '[traffic]\nsplit = { "1" = 100 }\nfallback = "previous"\n')
    server = _server(root, "")
    failures, done, stop = [], [0], threading.Event()
    streams = functools.partial(_stream_until, server, stop, done, failures)
    workers = [threading.Thread(target=streams) for _ in range(6)]
    try:
        for worker in workers:
            worker.start()
        plan = {"version": 2, "steps": [50, 100], "interval_s": 0.5, "min_requests": 5, "max_p99_ratio": 1000}
        started = call(f"{server.url}/admin/models/tiny-llama/rollout", plan)
        assert started.status == 202, started.body
        deadline, status = time.monotonic() + 90, "running"
        while status == "running" and time.monotonic() < deadline:
            status = call(f"{server.url}/admin/models/tiny-llama/rollout").body["rollout"]["status"]
            time.sleep(0.1)
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
        assert server.stop() == 0, server.log()
    assert status == outcome and not failures and done[0] > 10, (status, failures[:3], done)
