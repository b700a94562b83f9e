"""API keys end to end: a keys file made with `mlserve keys`, a real server started with
--auth-keys, and requests with no key, bad keys, keys lacking a scope, and keys over their limits."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tritonclient.http as httpclient

from mlserve import cli
from mlserve.examples import write_identity_onnx
from tests.server.fault_models import Spinner, write_model
from tests.server.http import call, infer_body, output
from tests.server_process import ROOT, MlserveProcess


def keys_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlserve", "keys", *args], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, timeout=60)


def make_key(keys_file, name: str, *options: str) -> str:
    """`mlserve keys create` with these options, run in process: a key is what the tests need, and the
    command as a process is tested through keys_cli (refusals, list, revoke) and tests/test_keys.py."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["keys", "create", "--file", str(keys_file), "--name", name, *options])
    assert code == 0, err.getvalue()
    return out.getvalue().strip()


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    write_identity_onnx(root / "identity" / "1" / "model.onnx", "FP32")
    write_model(root, "spinner", Spinner(), max_batch_size=0)
    keys_file = tmp_path_factory.mktemp("keys") / "keys.json"
    made = keys_cli("create", "--file", str(keys_file), "--name", "reader", "--scopes", "infer")  # as users do
    assert made.returncode == 0, made.stderr
    tokens = {
        "reader": made.stdout.strip(),
        "ops": make_key(keys_file, "ops", "--scopes", "infer,admin"),
        "metered": make_key(keys_file, "metered", "--scopes", "infer", "--rps", "2"),
        "single": make_key(keys_file, "single", "--scopes", "infer", "--concurrency", "1"),
        "temp": make_key(keys_file, "temp", "--scopes", "infer"),
    }
    proc = MlserveProcess(root, "--auth-keys", str(keys_file), log_path=tmp_path_factory.mktemp("logs") / "log")
    proc.tokens, proc.keys_file = tokens, keys_file
    yield proc.wait_ready()
    assert proc.stop() == 0, proc.log()


def bearer(server, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.tokens[name]}"}


X = np.arange(6, dtype=np.float32).reshape(2, 3)


def test_health_and_metrics_are_open(secured):
    assert call(f"{secured.url}/v2/health/live").status == 200
    assert call(f"{secured.url}/v2/health/ready").status == 200
    metrics = call(f"{secured.url}/metrics")
    assert metrics.status == 200 and "mlserve_requests" in metrics.body


@pytest.mark.parametrize("path", ["/v2", "/v2/models/identity", "/openapi.json", "/v1/models", "/anything/new"])
def test_every_other_path_needs_a_key(secured, path):
    answer = call(secured.url + path)
    assert answer.status == 401, (path, answer.body)
    message = "an API key is required: send 'Authorization: Bearer <key>'"
    if path.startswith("/v1/"):  # OpenAI's routes answer in OpenAI's error shape
        assert answer.body["error"]["message"] == message and answer.body["error"]["type"] == "authentication_error"
    else:
        assert answer.body == {"error": message}
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert call(secured.url + path, headers=bearer(secured, "reader")).status in (200, 404)


@pytest.mark.parametrize("token", [
    "nonsense", "mls_aaaaaaaaaaaa_" + "A" * 43, "Basic abc",
])
def test_invalid_keys_get_401(secured, token):
    answer = call(f"{secured.url}/v2/models/identity/infer", infer_body(X), {"Authorization": f"Bearer {token}"})
    assert answer.status == 401 and "not valid" in answer.body["error"]


def test_right_key_id_with_wrong_secret_gets_401(secured):
    key_id = secured.tokens["reader"].split("_")[1]
    forged = f"mls_{key_id}_" + "B" * 43
    answer = call(f"{secured.url}/v2/models/identity/infer", infer_body(X), {"Authorization": f"Bearer {forged}"})
    assert answer.status == 401


def test_tritonclient_with_a_key_gets_the_right_answer(secured):
    client = httpclient.InferenceServerClient(secured.url.removeprefix("http://"))
    x = httpclient.InferInput("x", list(X.shape), "FP32")
    x.set_data_from_numpy(X, binary_data=True)
    result = client.infer("identity", [x], headers=bearer(secured, "reader"))
    np.testing.assert_array_equal(result.as_numpy("y"), X)


def test_repository_endpoints_need_the_admin_scope(secured):
    url = f"{secured.url}/v2/repository/index"
    denied = call(url, b"", bearer(secured, "reader"))
    assert denied.status == 403 and denied.body["error"] == "key 'reader' lacks the 'admin' scope this endpoint needs"
    allowed = call(url, b"", bearer(secured, "ops"))
    assert allowed.status == 200 and {row["name"] for row in allowed.body} == {"identity", "spinner"}
    assert call(f"{secured.url}/admin/anything", headers=bearer(secured, "reader")).status == 403
    # The policy judges the route that runs, however the path is spelled.
    assert call(f"{secured.url}/v2/%72epository/index", b"", bearer(secured, "reader")).status == 403
    assert call(f"{secured.url}/v2/models/x/../../repository/index", b"", bearer(secured, "reader")).status in (403, 404)
    assert call(f"{secured.url}//v2/repository/index", b"", bearer(secured, "reader")).status in (403, 404)


def test_rate_limit_answers_429_with_retry_after(secured):
    url = f"{secured.url}/v2/models/identity/infer"
    answers = [call(url, infer_body(X), bearer(secured, "metered")) for _ in range(6)]
    refused = [a for a in answers if a.status == 429]
    assert [a.status for a in answers].count(200) >= 2 and len(refused) >= 3
    assert all(int(a.headers["Retry-After"]) >= 1 for a in refused)
    assert "limited to 2 requests per second" in refused[0].body["error"]
    time.sleep(1.1)
    again = call(url, infer_body(X), bearer(secured, "metered"))
    assert again.status == 200
    np.testing.assert_array_equal(output(again), X)
    assert call(url, infer_body(X), bearer(secured, "reader")).status == 200  # other tenants unaffected


def test_concurrency_limit_answers_429(secured):
    url = f"{secured.url}/v2/models/spinner/infer"
    busy = infer_body(np.full((1, 3), 300_000, np.float32))  # 0.3 s to 3 s
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(call, url, busy, bearer(secured, "single"))
        time.sleep(0.05)
        second = call(url, busy, bearer(secured, "single"))
        assert first.result().status == 200
    assert second.status == 429 and "in flight (limit 1)" in second.body["error"]
    assert second.headers["Retry-After"] == "1"


def test_revoked_key_stops_working_after_sighup(secured):
    url = f"{secured.url}/v2/models/identity/infer"
    assert call(url, infer_body(X), bearer(secured, "temp")).status == 200
    done = keys_cli("revoke", "--file", str(secured.keys_file), "temp")
    assert done.returncode == 0, done.stderr
    fresh = make_key(secured.keys_file, "fresh", "--scopes", "infer")
    secured.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while call(url, infer_body(X), bearer(secured, "temp")).status != 401 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert call(url, infer_body(X), bearer(secured, "temp")).status == 401
    assert call(url, infer_body(X), {"Authorization": f"Bearer {fresh}"}).status == 200


def test_keys_are_never_stored_or_logged_in_clear(secured):
    stored = secured.keys_file.read_text()
    log = secured.log()
    for token in secured.tokens.values():
        secret = token.split("_", 2)[2]
        assert secret not in stored and secret not in log
    records = json.loads(stored)["keys"]
    assert all(len(bytes.fromhex(r["hash"])) == 32 and len(bytes.fromhex(r["salt"])) == 16 for r in records)
    listing = keys_cli("list", "--file", str(secured.keys_file))
    assert listing.returncode == 0 and "name=reader" in listing.stdout
    assert not any(r["hash"] in listing.stdout or r["salt"] in listing.stdout for r in records)


def test_fuzzing_with_and_without_a_key_finds_no_server_error(secured):
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{secured.url}/openapi.json", headers=bearer(secured, "ops"))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert all("security" in op.definition.raw for op in operations if not op.path.startswith("/v2/health/"))
    for operation in operations:

        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def no_5xx(case):
            for headers in (bearer(secured, "ops"), bearer(secured, "reader"), {}):
                response = case.call(headers=headers, timeout=30)
                assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text}"

        no_5xx()


def test_failed_key_checks_from_one_address_get_429_with_retry_after(tmp_path):
    write_identity_onnx(tmp_path / "repo" / "identity" / "1" / "model.onnx", "FP32")
    keys_file = tmp_path / "keys.json"
    token = make_key(keys_file, "reader", "--scopes", "infer")
    forged = f"mls_{token.split('_')[1]}_" + "C" * 43
    env = {"MLSERVE_AUTH_FAILED_AUTH_BURST": "3", "MLSERVE_AUTH_FAILED_AUTH_PER_S": "0.05"}
    proc = MlserveProcess(tmp_path / "repo", "--auth-keys", str(keys_file), log_path=tmp_path / "log", env=env)
    try:
        proc.wait_ready()
        url = f"{proc.url}/v2/models/identity/infer"
        assert call(url, infer_body(X), {"Authorization": f"Bearer {token}"}).status == 200
        statuses = [call(url, infer_body(X), {"Authorization": f"Bearer {forged}"}) for _ in range(5)]
        assert [a.status for a in statuses] == [401, 401, 401, 429, 429]
        assert int(statuses[3].headers["Retry-After"]) >= 1 and "failed checks of this API key" in statuses[3].body["error"]
        assert call(url, infer_body(X), {"Authorization": f"Bearer {token}"}).status == 200  # remembered key
    finally:
        assert proc.stop() == 0, proc.log()


def test_bad_tokens_behind_a_shared_proxy_address_cannot_lock_out_a_valid_key(tmp_path):
    """Every client of an nginx in front shares its address. A flood of bad tokens from it used to
    spend that address's budget before any key was looked up, so a valid key seen for the first
    time got 429. Now only tokens naming a live key are counted, per (address, key id), and behind
    a trusted proxy the address is the X-Forwarded-For client."""
    write_identity_onnx(tmp_path / "repo" / "identity" / "1" / "model.onnx", "FP32")
    keys_file = tmp_path / "keys.json"
    token = make_key(keys_file, "reader", "--scopes", "infer")
    victim = make_key(keys_file, "victim", "--scopes", "infer")
    forged = f"mls_{token.split('_')[1]}_" + "C" * 43
    env = {"MLSERVE_AUTH_FAILED_AUTH_BURST": "3", "MLSERVE_AUTH_FAILED_AUTH_PER_S": "0.01"}
    proc = MlserveProcess(tmp_path / "repo", "--auth-keys", str(keys_file), "--trusted-proxies", "127.0.0.1/32",
                          log_path=tmp_path / "log", env=env)
    try:
        proc.wait_ready()
        url = f"{proc.url}/v2/models/identity/infer"

        def infer(tok: str, client: str) -> int:
            return call(url, infer_body(X), {"Authorization": f"Bearer {tok}", "X-Forwarded-For": client}).status

        for bad in ("garbage", "mls_000000000000_" + "A" * 43, "mls_zzzzzzzzzzzz_" + "B" * 43) * 10:
            assert infer(bad, "198.51.100.7") == 401
        assert infer(victim, "198.51.100.7") == 200  # first use of this key, after 30 bad tokens
        assert [infer(forged, "198.51.100.7") for _ in range(4)] == [401, 401, 401, 429]
        assert infer(token, "203.0.113.9") == 200  # another client behind the proxy: its own budget
        assert infer(forged, "198.51.100.8") == 401
    finally:
        assert proc.stop() == 0, proc.log()


def test_x_forwarded_for_from_an_untrusted_peer_does_not_escape_the_throttle(tmp_path):
    write_identity_onnx(tmp_path / "repo" / "identity" / "1" / "model.onnx", "FP32")
    keys_file = tmp_path / "keys.json"
    token = make_key(keys_file, "reader", "--scopes", "infer")
    forged = f"mls_{token.split('_')[1]}_" + "C" * 43
    env = {"MLSERVE_AUTH_FAILED_AUTH_BURST": "2", "MLSERVE_AUTH_FAILED_AUTH_PER_S": "0.01"}
    proc = MlserveProcess(tmp_path / "repo", "--auth-keys", str(keys_file), log_path=tmp_path / "log", env=env)
    try:
        proc.wait_ready()
        url = f"{proc.url}/v2/models/identity/infer"
        statuses = [call(url, infer_body(X), {"Authorization": f"Bearer {forged}",
                                              "X-Forwarded-For": f"203.0.113.{i}"}).status for i in range(4)]
        assert statuses == [401, 401, 429, 429]
    finally:
        assert proc.stop() == 0, proc.log()


def test_every_answered_infer_request_is_counted_with_its_final_status(secured):
    """Refusals by the gate (401, 403 is for admin; here 401 and 429) and bad input are counted in
    mlserve_requests_total beside the 200s, so the error-rate and shedding alerts can see them."""
    from tests.server.http import metric_value

    url = f"{secured.url}/v2/models/identity/infer"

    def count(code: str) -> float:
        return metric_value(secured.url, "mlserve_requests_total", model="identity", code=code, protocol="v2")

    before = {code: count(code) for code in ("200", "400", "401")}
    assert call(url, infer_body(X)).status == 401
    assert call(url, infer_body(X), headers={"Authorization": "Bearer mls_nope"}).status == 401
    assert call(url, {"inputs": []}, headers=bearer(secured, "reader")).status == 400
    assert call(url, infer_body(X), headers=bearer(secured, "reader")).status == 200
    assert count("401") == before["401"] + 2
    assert count("400") == before["400"] + 1
    assert count("200") == before["200"] + 1
