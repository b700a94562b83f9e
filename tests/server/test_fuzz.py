"""Fuzzing: schemathesis against a live server from its own /openapi.json, and hypothesis driving
the v2 JSON and binary-extension decoders directly with malformed input."""

from __future__ import annotations

import json

import numpy as np
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlserve.config import LimitsConfig
from mlserve.errors import InvalidInput
from mlserve.server.tensors import check_header, decode_binary_tensor, deserialize_bytes, encode_binary
from mlserve.server.http.v2_codec import decode_infer_request
from mlserve.spec import DATATYPE_TO_NUMPY

LIMITS = LimitsConfig()


def _decode(body, header_length):
    return decode_infer_request(body, header_length, "m", None, {}, LIMITS)


def _decode_binary_raw(raw, chunk):
    name, datatype, shape = check_header(raw)
    return name, datatype, decode_binary_tensor(name, datatype, shape, chunk)

# --- schemathesis: no 5xx, no crash, whatever the generated request ------------------------------


# The operations are walked by hand (not the lazy pytest plugin) so this runs on any pytest.
def test_no_server_errors(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def no_5xx(case):
            response = case.call(timeout=30)
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.status_code} {response.text}"
            if response.status_code >= 400:
                assert set(response.json()) == {"error"}, f"{where}: {response.text}"

        no_5xx()
    assert server.proc.poll() is None, "the server died under fuzzing"


def test_openapi_describes_every_route(server):
    from tests.server.http import call

    doc = call(f"{server.url}/openapi.json").body
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for expected in ("/v2/health/ready", "/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer",
                     "/v2/repository/index", "/metrics", "/openapi.json"):
        assert expected in paths
    assert "requestBody" in paths["/v2/models/{model}/infer"]["post"]


# --- hypothesis: the decoders only ever raise InvalidInput ----------------------------------------

JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
JSON = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                           max_size=4), max_leaves=20)
# Every field may hold any JSON value: a list where a string belongs, an object where a number does.
DATATYPES = st.sampled_from([*DATATYPE_TO_NUMPY, "FP8", "", "fp32"]) | JSON
SHAPES = (st.lists(st.integers(-2, 5) | st.just(2**40), max_size=4) | st.lists(st.integers(0, 1), min_size=60, max_size=70)
          | JSON)
NESTED_DATA = st.recursive(st.integers(-300, 2**65) | st.floats() | st.text(max_size=3) | st.booleans(),
                           lambda inner: st.lists(inner, max_size=4), max_leaves=24)


@st.composite
def tensors(draw):
    raw = {"name": draw(st.sampled_from(["x", "y", ""]) | JSON), "datatype": draw(DATATYPES), "shape": draw(SHAPES)}
    if draw(st.booleans()):
        raw["data"] = draw(NESTED_DATA | JSON)
    if draw(st.booleans()):
        raw["parameters"] = draw(st.fixed_dictionaries({"binary_data_size": st.integers(-5, 64) | JSON}) | JSON)
    if draw(st.booleans()):
        raw[draw(st.text(max_size=6))] = draw(JSON)
    return raw


@st.composite
def infer_bodies(draw):
    body = {"inputs": draw(st.lists(tensors() | JSON, max_size=3) | JSON)}
    for key in ("id", "parameters", "outputs"):
        if draw(st.booleans()):
            body[key] = draw(JSON | st.lists(st.fixed_dictionaries({"name": st.text(max_size=3) | JSON,
                                                                      "parameters": JSON})))
    if draw(st.booleans()):
        body["parameters"] = draw(st.fixed_dictionaries({}, optional={
            "priority": JSON, "timeout": JSON, "binary_data_output": JSON}))
    header = json.dumps(body).encode()
    binary = draw(st.binary(max_size=64))
    header_length = draw(st.sampled_from([None, str(len(header)), "-1", "abc", str(len(header) + 3)]))
    return header + (binary if header_length is not None else b""), header_length


def _only_invalid_input(fn, *args):
    try:
        fn(*args)
    except InvalidInput:
        pass


@settings(max_examples=200, deadline=None)
@given(infer_bodies())
def test_v2_decoder_rejects_malformed_requests_cleanly(case):
    body, header_length = case
    _only_invalid_input(_decode, body, header_length)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256), st.sampled_from([None, "0", "5", "100000"]))
def test_v2_decoder_survives_arbitrary_bytes(body, header_length):
    _only_invalid_input(_decode, body, header_length)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=128), st.lists(st.integers(0, 6), max_size=3))
def test_binary_bytes_decoder_rejects_malformed_chunks(chunk, shape):
    _only_invalid_input(deserialize_bytes, "x", memoryview(chunk), tuple(shape))


@settings(max_examples=300, deadline=None)
@given(tensors(), st.binary(max_size=96))
def test_binary_tensor_decoder_rejects_malformed_input(raw, chunk):
    _only_invalid_input(_decode_binary_raw, raw, memoryview(chunk))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([d for d in DATATYPE_TO_NUMPY if d != "BYTES"]), st.lists(st.integers(0, 4), min_size=1, max_size=3),
       st.randoms())
def test_binary_round_trip(datatype, shape, rnd):
    dtype = np.dtype(DATATYPE_TO_NUMPY[datatype])
    raw_bytes = bytes(rnd.getrandbits(8) for _ in range(int(np.prod(shape)) * dtype.itemsize))
    array = np.frombuffer(raw_bytes, dtype=dtype).reshape(shape)
    name, got_type, decoded = _decode_binary_raw(
        {"name": "x", "datatype": datatype, "shape": shape}, memoryview(encode_binary(array, datatype))
    )
    assert (name, got_type) == ("x", datatype)
    assert decoded.tobytes() == array.tobytes() and decoded.shape == array.shape


def test_empty_tensor_with_overflowing_dimensions_is_invalid_input():
    """Found by the binary-decoder fuzz: a zero dimension made the count match, numpy then refused."""
    shape = [2**40, 2**40, 0]
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": []}]}).encode()
    for decode in (lambda: _decode_binary_raw({"name": "x", "datatype": "FP32", "shape": shape}, memoryview(b"")),
                   lambda: _decode(body, None)):
        try:
            decode()
        except InvalidInput as exc:
            assert "too large" in str(exc)
        else:
            raise AssertionError("accepted an unrepresentable shape")


def test_each_wrong_type_in_each_field_is_a_400_that_names_the_problem():
    """Found in review: a list as the datatype was a TypeError (500); 65 dimensions crashed numpy."""
    base = {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}
    cases = {
        "datatype": ([], "unknown datatype"), "shape": ([1] * 65, "more than 64"), "name": ({}, "no name"),
        "data": ("12", "data must be a list"), "parameters": ([], "must be an object"),
    }
    for field, (value, message) in cases.items():
        body = json.dumps({"inputs": [{**base, field: value}]}).encode()
        try:
            _decode(body, None)
        except InvalidInput as exc:
            assert message in str(exc), (field, str(exc))
        else:
            raise AssertionError(f"{field}={value!r} was accepted")
    for extra, message in (({"parameters": {"sequence_id": 3}}, "sequence_id"), ({"id": "x" * 129}, "128"),
                           ({"outputs": [{"name": "y", "parameters": {"class_count": 3}}]}, "class_count")):
        body = json.dumps({"inputs": [base], **extra}).encode()
        try:
            result = _decode(body, None)
        except InvalidInput as exc:
            assert message in str(exc), (extra, str(exc))
        else:
            assert "sequence_id" in result.request.parameters  # left for the service, which refuses it
