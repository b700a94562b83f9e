"""The fast lane answers exactly as aiohttp does: one request corpus (every datatype in JSON and
binary, every error case, auth on and off, seeded fuzz) goes through both fronts and must get the
same status, the same headers (all but Date) and the same body, byte for byte.

Two ways to reach aiohttp: with auth on, the same server, where a connection that began with
another request is aiohttp's for good (so the lane's hand-over is exercised too); with auth off, a
second server started with `fast_lane = false`."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
import tritonclient.http as httpclient

from mlserve.examples import write_identity_onnx
from tests.models import DATATYPES
from tests.server.http import metric_value, wait_for
from tests.server.raw_http import RawAnswer, RawConnection, request_bytes
from tests.server.test_auth import make_key
from tests.server.test_v2_e2e import datatype_sample
from tests.server_process import MlserveProcess

MAX_BODY = 1 << 20
_GENERATED_ID = re.compile(rb"[0-9a-f]{32}")


def _repo(root):
    for datatype in DATATYPES:
        write_identity_onnx(root / f"identity_{datatype.lower()}" / "1" / "model.onnx", datatype)
    broken = root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    return root


def _start(root, log, *args, env=None):
    env = {"MLSERVE_SERVER_MAX_BODY_BYTES": str(MAX_BODY), **(env or {})}
    return MlserveProcess(root, *args, log_path=log, env=env).wait_ready()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return _repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def secured(repo, tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("keys") / "keys.json"
    tokens = {
        "reader": make_key(keys_file, "reader", "--scopes", "infer"),
        "admin_only": make_key(keys_file, "admin_only", "--scopes", "admin"),
        "metered_a": make_key(keys_file, "metered_a", "--scopes", "infer", "--rps", "0.01"),
        "metered_b": make_key(keys_file, "metered_b", "--scopes", "infer", "--rps", "0.01"),
    }
    proc = _start(repo, tmp_path_factory.mktemp("logs") / "log", "--auth-keys", str(keys_file))
    proc.tokens = tokens
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def open_pair(repo, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    lane = _start(repo, logs / "lane")
    plain = _start(repo, logs / "plain", env={"MLSERVE_SERVER_FAST_LANE": "false"})
    yield lane, plain
    assert lane.stop() == 0, lane.log()
    assert plain.stop() == 0, plain.log()


# ---- the corpus ------------------------------------------------------------------------------

def _tensor_request(datatype: str, binary: bool, **options) -> tuple[bytes, dict[str, str]]:
    """A body as Triton's own HTTP client frames it."""
    if datatype == "BYTES" and not binary:
        sample = np.array([[b"a", b"", b"caf\xc3\xa9"], [b"xyz", b"12", b"q"]], dtype=object)
    else:
        sample = datatype_sample(datatype)
    inp = httpclient.InferInput("x", list(sample.shape), datatype)
    inp.set_data_from_numpy(sample, binary_data=binary)
    out = httpclient.InferRequestedOutput("y", binary_data=binary)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([inp], [out], **options)
    headers = {"Content-Type": "application/octet-stream" if json_size else "application/json"}
    if json_size:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return body, headers


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


X3 = {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}
FP32 = "/v2/models/identity_fp32/infer"


def _valid_and_error_cases() -> list[tuple[str, str, bytes, dict[str, str]]]:
    cases = []
    for datatype in DATATYPES:
        for binary in (False, True):
            body, headers = _tensor_request(datatype, binary)
            cases.append((f"{datatype} binary={binary}", f"/v2/models/identity_{datatype.lower()}/infer", body, headers))
    body, headers = _tensor_request("FP32", True, request_id="req-7")
    cases.append(("with id", FP32, body, headers))
    body, headers = _tensor_request("INT32", False, priority=1, timeout=5_000_000)
    cases.append(("priority and timeout", "/v2/models/identity_int32/infer", body, headers))
    cases += [
        ("version path", "/v2/models/identity_fp32/versions/1/infer", _json({"id": "v", "inputs": [X3]}), {}),
        ("query string", FP32 + "?a=1", _json({"id": "q", "inputs": [X3]}), {}),
        ("connection close", FP32, _json({"id": "cc", "inputs": [X3]}), {"Connection": "close"}),
        ("sticky header", FP32, _json({"id": "s", "inputs": [X3]}), {"X-User-Id": "u1", "X-Request-Id": "r1"}),
        ("binary_data_output", FP32, _json({"id": "b", "inputs": [X3], "parameters": {"binary_data_output": True}}), {}),
        ("classification", FP32, _json({"id": "c", "inputs": [X3],
                                        "outputs": [{"name": "y", "parameters": {"classification": 2}}]}), {}),
        ("unknown model", "/v2/models/nope/infer", _json({"inputs": [X3]}), {}),
        ("unknown version", "/v2/models/identity_fp32/versions/9/infer", _json({"inputs": [X3]}), {}),
        ("broken model", "/v2/models/broken/infer", _json({"inputs": [X3]}), {}),
        ("malformed JSON", FP32, b'{"inputs": [', {}),
        ("not an object", FP32, b"[1, 2]", {}),
        ("empty body", FP32, b"", {}),
        ("no inputs", FP32, _json({"inputs": []}), {}),
        ("wrong shape", FP32, _json({"inputs": [{**X3, "shape": [1, 4]}]}), {}),
        ("wrong datatype", FP32, _json({"inputs": [{**X3, "datatype": "INT8"}]}), {}),
        ("data does not fit shape", FP32, _json({"inputs": [{**X3, "data": [1.0]}]}), {}),
        ("unknown parameter", FP32, _json({"inputs": [X3], "parameters": {"bogus": 1}}), {}),
        ("bad priority", FP32, _json({"inputs": [X3], "parameters": {"priority": -1}}), {}),
        ("bad timeout", FP32, _json({"inputs": [X3], "parameters": {"timeout": "soon"}}), {}),
        ("bad request id", FP32, _json({"id": "x" * 10_000, "inputs": [X3]}), {}),
        ("unknown output", FP32, _json({"inputs": [X3], "outputs": [{"name": "zz"}]}), {}),
        ("too many elements", FP32, _json({"inputs": [{**X3, "shape": [1 << 30, 3]}]}), {}),
        ("header length past body", FP32, _json({"inputs": [X3]}), {"Inference-Header-Content-Length": "99999"}),
        ("header length not a number", FP32, _json({"inputs": [X3]}), {"Inference-Header-Content-Length": "x"}),
        ("stray binary bytes", FP32, _json({"inputs": [X3]}) + b"\x00\x01",
         {"Inference-Header-Content-Length": str(len(_json({"inputs": [X3]})))}),
        ("binary size past end", FP32, _json({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                                          "parameters": {"binary_data_size": 12}}]}), {}),
    ]
    return cases


def _fuzz_cases(count: int = 40, seed: int = 29) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """Seeded mutations of valid bodies: truncations, flipped bytes, spliced JSON values."""
    rng = random.Random(seed)
    seeds = [_json({"inputs": [X3]}), _tensor_request("FP32", True)[0], _tensor_request("BYTES", True)[0]]
    values = [b"null", b"-1", b"1e999", b'"\\u0000"', b"[]", b"{}", b"true", b"\xff\xfe", b"18446744073709551616"]
    cases = []
    for i in range(count):
        body = bytearray(rng.choice(seeds))
        kind = rng.randrange(3)
        if kind == 0:
            del body[rng.randrange(len(body)):]
        elif kind == 1:
            for _ in range(rng.randint(1, 4)):
                body[rng.randrange(len(body))] = rng.randrange(256)
        else:
            at = rng.randrange(len(body))
            body[at:at + rng.randint(1, 8)] = rng.choice(values)
        cases.append((f"fuzz {i}", FP32, bytes(body), {}))
    return cases


def _over_limit_case() -> tuple[str, bytes]:
    """Declared larger than the limit: refused from the head, the body is never sent."""
    return "over max_body_bytes", request_bytes("POST", FP32, headers={"Content-Length": str(MAX_BODY + 1)})


# ---- running it ------------------------------------------------------------------------------

def _comparable(answer: RawAnswer) -> tuple:
    """All but Date; an id the server made up is the only part of a body allowed to differ."""
    headers = {k: v for k, v in answer.headers.items() if k != "date"}
    body = answer.body
    if "mlserve-request-id" in headers and _GENERATED_ID.fullmatch(headers["mlserve-request-id"].encode()):
        body = body.replace(headers["mlserve-request-id"].encode(), b"<id>")
        headers["mlserve-request-id"] = "<id>"
    return answer.status, headers, body


def _via_lane(port: int, raw: bytes) -> RawAnswer:
    """On a fresh connection: its first request, which the lane serves if it is an infer request."""
    conn = RawConnection(port)
    try:
        return conn.call(raw)
    finally:
        conn.close()


class _AiohttpPath:
    """One connection handed to aiohttp by a first GET; reopened the same way if the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: RawConnection | None = None

    def call(self, raw: bytes) -> RawAnswer:
        if self.conn is None:
            self.conn = RawConnection(self.port)
            assert self.conn.call(request_bytes("GET", "/v2/health/live")).status == 200
        answer = self.conn.call(raw)
        if answer.headers.get("connection") == "close":
            self.conn.close()
            self.conn = None
        return answer


def _corpus(auth: dict[str, str]) -> list[tuple[str, bytes]]:
    return [(name, request_bytes("POST", path, body, {**headers, **auth}))
            for name, path, body, headers in _valid_and_error_cases() + _fuzz_cases()]


def _assert_same(name: str, lane: RawAnswer, other: RawAnswer) -> None:
    assert _comparable(lane) == _comparable(other), f"{name}: the lane and aiohttp differ"


def test_the_lane_answers_as_aiohttp_does_with_keys_on(secured):
    auth = {"Authorization": f"Bearer {secured.tokens['reader']}"}
    bad_auth = [
        ("no key", {}),
        ("not bearer", {"Authorization": "Basic abc"}),
        ("unknown key", {"Authorization": "Bearer mls_nope_nope"}),
        ("key without the infer scope", {"Authorization": f"Bearer {secured.tokens['admin_only']}"}),
    ]
    corpus = _corpus(auth) + [_over_limit_case()]
    corpus += [(name, request_bytes("POST", FP32, _json({"inputs": [X3]}), headers)) for name, headers in bad_auth]
    aiohttp_path = _AiohttpPath(secured.port)
    lane_before = metric_value(secured.url, "mlserve_http_connections_total", front="lane")
    for name, raw in corpus:
        _assert_same(name, _via_lane(secured.port, raw), aiohttp_path.call(raw))
    # the per-key rate limit: one key per path, each allowed its first request and refused the second
    for answers in ([_via_lane(secured.port, _metered(secured, "metered_a")) for _ in range(2)],
                    [aiohttp_path.call(_metered(secured, "metered_b")) for _ in range(2)]):
        assert [a.status for a in answers] == [200, 429] and "retry-after" in answers[1].headers
    wait_for(lambda: metric_value(secured.url, "mlserve_http_connections_total", front="lane") >= lane_before + len(corpus),
             "every lane connection of the corpus to have been the lane's")


def _metered(server, key: str) -> bytes:
    return request_bytes("POST", FP32, _json({"id": "m", "inputs": [X3]}),
                         {"Authorization": f"Bearer {server.tokens[key]}"})


def test_the_lane_answers_as_a_server_without_it_does_with_keys_off(open_pair):
    lane, plain = open_pair
    for name, raw in _corpus({}) + [_over_limit_case()]:
        _assert_same(name, _via_lane(lane.port, raw), _via_lane(plain.port, raw))
    assert metric_value(plain.url, "mlserve_http_connections_total", front="lane") == 0
    assert metric_value(plain.url, "mlserve_requests_total", model="identity_fp32", code="200") > 0


def test_failed_key_throttling_holds_across_both_fronts(secured):
    """Wrong secrets for a live key tried on the lane use up the (address, key) attempts for aiohttp
    too, and the reverse."""
    key_id = secured.tokens["reader"].split("_")[1]
    wrong = f"mls_{key_id}_{'x' * 43}"
    bad = request_bytes("POST", FP32, _json({"inputs": [X3]}), {"Authorization": f"Bearer {wrong}"})
    aiohttp_path = _AiohttpPath(secured.port)
    statuses = []
    for i in range(30):
        statuses.append(_via_lane(secured.port, bad).status if i % 2 else aiohttp_path.call(bad).status)
    assert 401 in statuses and statuses[-1] == 429
    throttled_lane, throttled_aiohttp = _via_lane(secured.port, bad), aiohttp_path.call(bad)
    assert throttled_lane.status == throttled_aiohttp.status == 429
    assert throttled_lane.body == throttled_aiohttp.body and "retry-after" in throttled_lane.headers
