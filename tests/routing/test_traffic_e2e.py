"""End to end through a real mlserve process: splits, stickiness, feedback and the experiment view,
the breaker and its fallback, canary rollouts, shadows. Outputs are checked against onnxruntime
runs of the same files."""

from __future__ import annotations

import concurrent.futures
import json
import math
import time
import urllib.error
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from scipy import stats as sps


def _call(url: str, body=None, method: str = "POST", headers: dict | None = None):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    headers = {"Content-Type": "application/json", **(headers or {})} if data is not None else headers
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def _infer_body(x: np.ndarray, req_id: str | None = None, parameters: dict | None = None) -> dict:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    if req_id is not None:
        body["id"] = req_id
    if parameters:
        body["parameters"] = parameters
    return body


def _infer(server, model: str, x: np.ndarray, version: str | None = None, **kw):
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    headers = kw.pop("headers", None)
    return _call(server.url + path, _infer_body(x, **kw), headers=headers)


def _reference(repo, model: str, version: str, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(repo / model / version / "model.onnx")).run(None, {"x": x})[0]


def _metric(server, name: str, labels: dict) -> float | None:
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def _within_binomial(count: int, n: int, p: float, z: float = 4.0) -> bool:
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p))


X = np.array([[0.5, 1.5, -2.0]], dtype=np.float32)
BAD = np.array([[9.0, 1.0, 1.0]], dtype=np.float32)
"""x[0, 0] = 9 is out of the failing model's table: it errors there and nowhere else."""


def _versions_of(server, model: str, users: list[str]) -> dict[str, str]:
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    x = httpclient.InferInput("x", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    return {u: client.infer(model, [x], headers={"X-User-Id": u}).get_response()["model_version"] for u in users}


def test_split_is_weighted_and_sticky_and_an_explicit_version_bypasses_it(traffic_server, traffic_repo):
    users = [f"user-{i}" for i in range(600)]
    first = _versions_of(traffic_server, "ab", users)
    assert _within_binomial(sum(v == "2" for v in first.values()), len(users), 0.10)
    assert _versions_of(traffic_server, "ab", users[:100]) == {u: first[u] for u in users[:100]}
    on_two = next(u for u in users if first[u] == "2")
    status, body, headers = _infer(traffic_server, "ab", X, headers={"X-User-Id": on_two})
    assert status == 200 and body["model_version"] == "2" and headers["Mlserve-Model-Version"] == "2"
    np.testing.assert_allclose(np.array(body["outputs"][0]["data"]).reshape(X.shape), _reference(traffic_repo, "ab", "2", X))
    status, body, _ = _infer(traffic_server, "ab", X, version="1", headers={"X-User-Id": on_two})
    assert body["model_version"] == "1"
    np.testing.assert_allclose(np.array(body["outputs"][0]["data"]).reshape(X.shape), _reference(traffic_repo, "ab", "1", X))

    url = traffic_server.url + "/admin/models/ab/traffic"
    for bad in ({"split": {"7": 100}}, {"split": {"1": -5}}, {"weights": {}}, b"{not json"):
        status, body, _ = _call(url, bad, method="PUT")
        assert status == 400 and "error" in body
    assert _call(url, method="GET")[1]["split"] == {"1": 90.0, "2": 10.0}

    status, body, _ = _call(url, {"split": {"1": 50, "2": 50}}, method="PUT")
    assert status == 200 and body["split"] == {"1": 50.0, "2": 50.0} and body["source"] == "api"
    assert _metric(traffic_server, "mlserve_traffic_weight", {"model": "ab", "version": "2"}) == 0.5
    second = _versions_of(traffic_server, "ab", users)
    moved = [u for u in users if second[u] != first[u]]
    assert all(first[u] == "1" and second[u] == "2" for u in moved)  # nobody left version 2
    assert _within_binomial(len(moved), len(users), 0.40)
    assert _within_binomial(sum(v == "2" for v in second.values()), len(users), 0.50)


def test_changing_weights_under_load_drops_no_request(traffic_server):
    url = traffic_server.url + "/admin/models/ab/traffic"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        load = pool.submit(_load, traffic_server, "ab", 2.0, 0.0)
        for share in (10, 30, 50, 70, 90, 50):
            time.sleep(0.25)
            assert _call(url, {"split": {"1": 100 - share, "2": share}}, method="PUT")[0] == 200
        results = load.result()
    assert len(results) > 20 and all(status == 200 for status, _ in results)
    assert {v for _, v in results} == {"1", "2"}


def test_request_ids_are_returned_and_generated(traffic_server):
    status, body, headers = _infer(traffic_server, "ab", X, req_id="my-id")
    assert body["id"] == "my-id" and headers["Mlserve-Request-Id"] == "my-id"
    status, body, headers = _infer(traffic_server, "ab", X)
    assert len(body["id"]) == 32 and headers["Mlserve-Request-Id"] == body["id"]


def test_feedback_feeds_the_experiment_view(traffic_server):
    rng = np.random.default_rng(5)
    outcomes: dict[str, list[int]] = {"1": [], "2": []}
    for i in range(300):
        status, body, _ = _infer(traffic_server, "exp", X, req_id=f"r{i}", parameters={"user": f"u{i}"})
        version = body["model_version"]
        value = int(rng.random() < (0.2 if version == "1" else 0.45))
        status, ack, _ = _call(traffic_server.url + "/v2/models/exp/feedback", {"id": f"r{i}", "value": value})
        assert status == 200 and ack["version"] == version
        outcomes[version].append(value)
    url = traffic_server.url + "/v2/models/exp/feedback"
    assert _call(url, {"id": "r0", "value": 1})[0] == 400  # already has an outcome
    assert _call(url, {"id": "nope", "value": 1})[0] == 404
    assert _call(url, {"id": "r1", "value": 0.5})[0] == 400  # binary outcome
    assert _call(url, {"value": 1})[0] == 400

    status, view, _ = _call(traffic_server.url + "/admin/models/exp/experiment", method="GET")
    assert status == 200 and view["control"] == "1"
    for version, values in outcomes.items():
        row = view["versions"][version]
        assert row["requests"] == len(values) and row["outcomes"] == len(values)
        assert row["mean"] == pytest.approx(np.mean(values)) and row["error_rate"] == 0.0
        assert row["latency_p99_s"] > 0
    k1, n1, k2, n2 = sum(outcomes["1"]), len(outcomes["1"]), sum(outcomes["2"]), len(outcomes["2"])
    _, p, _, _ = sps.chi2_contingency([[k1, n1 - k1], [k2, n2 - k2]], correction=False)
    treated = view["versions"]["2"]
    assert treated["p_value"] == pytest.approx(p, rel=1e-9)
    assert treated["lift"] == pytest.approx((k2 / n2 - k1 / n1) / (k1 / n1))
    assert treated["decision"] in ("continue", "treatment_better")
    assert treated["sample_size_per_arm"] > 0 and treated["samples_still_needed"] >= 0


def test_breaker_opens_after_the_threshold_and_the_fallback_answers(traffic_server, traffic_repo):
    failures = 0
    for _ in range(3):
        status, body, _ = _infer(traffic_server, "brk", BAD)
        failures += status == 500
    assert failures == 3  # the threshold; the newest version (2) fails these inputs
    assert _metric(traffic_server, "mlserve_breaker_state", {"model": "brk", "version": "2"}) == 2
    for _ in range(10):
        status, body, _ = _infer(traffic_server, "brk", BAD)
        assert status == 200 and body["model_version"] == "1"
        np.testing.assert_allclose(np.array(body["outputs"][0]["data"]).reshape(BAD.shape),
                                   _reference(traffic_repo, "brk", "1", BAD))
    time.sleep(2.2)  # open_s: one half-open probe goes to version 2, fails, and opens it again
    statuses = [_infer(traffic_server, "brk", BAD)[0] for _ in range(5)]
    assert statuses == [500, 200, 200, 200, 200]
    time.sleep(2.2)  # a good probe closes it
    status, body, _ = _infer(traffic_server, "brk", X)
    assert status == 200 and body["model_version"] == "2"
    assert _metric(traffic_server, "mlserve_breaker_state", {"model": "brk", "version": "2"}) == 0
    assert _metric(traffic_server, "mlserve_fallback_requests_total", {"model": "brk", "version": "2"}) >= 14


def test_breaker_bounds_failures_under_concurrent_load(traffic_server):
    """Eight clients at once: failures stop at the threshold plus what was already in flight."""
    def client(_):
        return [_infer(traffic_server, "conc", BAD) for _ in range(10)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = [r for part in pool.map(client, range(8)) for r in part]
    failures = sum(status == 500 for status, _, _ in results)
    assert 5 <= failures <= 5 + 8 - 1
    assert all(body["model_version"] == "1" for status, body, _ in results if status == 200)
    assert len(results) - failures >= 80 - 12


def test_breaker_falls_back_to_a_named_model(traffic_server):
    statuses = [_infer(traffic_server, "named", BAD)[0] for _ in range(2)]
    assert statuses == [500, 500]
    status, body, _ = _infer(traffic_server, "named", BAD)
    assert status == 200 and body["model_name"] == "ab"


def _load(server, model: str, stop_after_s: float, bad_share: float, good=X) -> list[tuple[int, str]]:
    """Four clients for a while; a share of the inputs make the failing model error."""
    def client(seed: int) -> list[tuple[int, str]]:
        rng, seen, end = np.random.default_rng(seed), [], time.monotonic() + stop_after_s
        while time.monotonic() < end:
            status, body, _ = _infer(server, model, BAD if rng.random() < bad_share else good)
            seen.append((status, body.get("model_version", "")))
        return seen
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return [r for part in pool.map(client, range(4)) for r in part]


def _wait_rollout(server, model: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rollout = _call(server.url + f"/admin/models/{model}/rollout", method="GET")[1]["rollout"]
        if rollout["status"] != "running":
            return rollout
        time.sleep(0.2)
    raise AssertionError(f"rollout still running after {timeout} s: {rollout}")


def test_failing_canary_is_rolled_back_under_load_and_a_good_one_promoted(traffic_server):
    url = traffic_server.url + "/admin/models/canary/rollout"
    plan = {"version": "2", "steps": [20, 50, 100], "interval_s": 1.0, "max_error_rate_increase": 0.01,
            "max_p99_ratio": 50, "min_requests": 5}
    assert _call(url, {**plan, "version": "9"})[0] == 400
    status, body, _ = _call(url, plan)
    assert status == 202 and body["rollout"]["status"] == "running" and body["rollout"]["percent"] == 20
    assert _call(url, plan)[0] == 400  # one rollout at a time
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        load = pool.submit(_load, traffic_server, "canary", 4.0, 0.3)
        rollout = _wait_rollout(traffic_server, "canary", 30)
        load.result()
    assert rollout["status"] == "rolled_back" and "error rate" in rollout["reason"]
    traffic = _call(traffic_server.url + "/admin/models/canary/traffic", method="GET")[1]
    assert traffic["split"]["2"] == 0 and traffic["stable"] == "1"
    assert _metric(traffic_server, "mlserve_rollout_rollbacks_total", {"model": "canary", "version": "2"}) == 1
    assert _metric(traffic_server, "mlserve_rollout_state", {"model": "canary", "version": "2"}) == 3
    assert {v for _, v in _load(traffic_server, "canary", 0.5, 0.0)} == {"1"}

    status, body, _ = _call(url, {**plan, "version": "3", "steps": [25, 100]})
    assert status == 202
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        load = pool.submit(_load, traffic_server, "canary", 3.0, 0.0)
        rollout = _wait_rollout(traffic_server, "canary", 30)
        load.result()
    assert rollout["status"] == "promoted", rollout
    traffic = _call(traffic_server.url + "/admin/models/canary/traffic", method="GET")[1]
    assert traffic["split"] == {"3": 100.0} and traffic["stable"] == "3"
    assert {v for _, v in _load(traffic_server, "canary", 0.5, 0.0)} == {"3"}


def test_slow_canary_is_rolled_back_on_p99(traffic_server):
    plan = {"version": "2", "steps": [50, 100], "interval_s": 5.0, "max_error_rate_increase": 0.5,
            "max_p99_ratio": 1.5, "min_requests": 10}
    status, _, _ = _call(traffic_server.url + "/admin/models/slowc/rollout", plan)
    assert status == 202
    wide = np.ones((1, 256), dtype=np.float32)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        load = pool.submit(_load, traffic_server, "slowc", 4.0, 0.0, wide)
        rollout = _wait_rollout(traffic_server, "slowc", 30)
        load.result()
    assert rollout["status"] == "rolled_back" and "p99" in rollout["reason"], rollout
    assert _call(traffic_server.url + "/admin/models/slowc/traffic", method="GET")[1]["split"]["2"] == 0


def test_shadow_answers_are_compared_never_returned(traffic_server, traffic_repo):
    rng = np.random.default_rng(3)
    sent = []
    for _ in range(40):
        x = rng.standard_normal((2, 3)).astype(np.float32)
        status, body, _ = _infer(traffic_server, "sh", x)
        assert status == 200 and body["model_version"] == "1"
        np.testing.assert_allclose(np.array(body["outputs"][0]["data"]).reshape(x.shape),
                                   _reference(traffic_repo, "sh", "1", x))
        sent.append(x)
    deadline = time.monotonic() + 10
    while True:
        shadow = _call(traffic_server.url + "/admin/models/sh/experiment", method="GET")[1]["shadow"]
        if shadow["compared"] + shadow["dropped"] >= 40 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert shadow["compared"] == 40 and shadow["failed"] == 0
    primary = [_reference(traffic_repo, "sh", "1", x) for x in sent]
    copies = [_reference(traffic_repo, "sh", "2", x) for x in sent]
    agree = np.mean([a == b for p, s in zip(primary, copies) for a, b in zip(p.argmax(1), s.argmax(1))])
    assert shadow["agreement"] == pytest.approx(agree)
    assert shadow["mean_abs_diff"] == pytest.approx(np.mean([np.abs(p - s).mean() for p, s in zip(primary, copies)]), rel=1e-5)
    assert _metric(traffic_server, "mlserve_shadow_requests_total",
                   {"model": "sh", "version": "2", "outcome": "compared"}) == 40


def test_admin_errors_are_json_and_change_nothing(traffic_server):
    base = traffic_server.url
    before = _call(base + "/admin/models/sh/traffic", method="GET")[1]
    for url, body, method, status in [
        ("/admin/models/nope/traffic", None, "GET", 404),
        ("/admin/models/nope/experiment", None, "GET", 404),
        ("/admin/models/sh/rollout", b"{bad", "POST", 400),
        ("/admin/models/sh/rollout", {"version": "2", "steps": [50, 10]}, "POST", 400),
        ("/admin/models/sh/rollout", None, "DELETE", 400),
        ("/admin/models/sh/traffic", {"split": {"1": 0}}, "PUT", 400),
        ("/v2/models/sh/feedback", [1, 2], "POST", 400),
        ("/v2/models/nope/feedback", {"id": "x", "value": 1}, "POST", 404),
    ]:
        code, reply, _ = _call(base + url, body, method=method)
        assert code == status and isinstance(reply.get("error"), str), (url, code, reply)
    after = _call(base + "/admin/models/sh/traffic", method="GET")[1]
    assert {k: after[k] for k in ("split", "stable", "rollout")} == {k: before[k] for k in ("split", "stable", "rollout")}
