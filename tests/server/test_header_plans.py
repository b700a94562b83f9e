"""A binary request's header is checked once per distinct header (HeaderPlans): a request decoded from
a remembered header equals one decoded from scratch, its own bytes are read every time, and what a
fresh decode refuses is refused alike."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from mlserve.config import LimitsConfig
from mlserve.errors import InvalidInput
from mlserve.server.http.v2_codec import HeaderPlans, decode_infer_request

LIMITS = LimitsConfig()


def _body(x: np.ndarray, names: np.ndarray, **extra) -> tuple[bytes, str]:
    text = b"".join(len(n).to_bytes(4, "little") + n for n in names)
    header = orjson.dumps({
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}},
            {"name": "s", "shape": [len(names)], "datatype": "BYTES", "parameters": {"binary_data_size": len(text)}},
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z", "parameters": {"classification": 2}}],
        "parameters": {"priority": 2, "timeout": 5_000_000, "region": "eu"},
        **extra,
    })
    return header + x.tobytes() + text, str(len(header))


def _fields(decoded):
    r = decoded.request
    return ({k: v.tolist() for k, v in r.inputs.items()}, r.datatypes, r.req_id, r.outputs, r.parameters,
            r.policy.priority, r.policy.deadline, dict(r.class_counts), decoded.binary_outputs, decoded.default_binary)


def test_a_remembered_header_decodes_as_a_fresh_one_and_reads_each_requests_bytes():
    plans = HeaderPlans()
    rng = np.random.default_rng(0)
    for i in range(3):
        x = rng.standard_normal((2, 3), dtype=np.float32)
        names = np.array([f"row {i}".encode(), b"\xc3\xa9"], dtype=object)
        body, length = _body(x, names)
        planned = decode_infer_request(body, length, "m", "1", {}, LIMITS, 100.0, plans)
        fresh = decode_infer_request(body, length, "m", "1", {}, LIMITS, 100.0)
        assert _fields(planned) == _fields(fresh)
        np.testing.assert_array_equal(planned.request.inputs["x"], x)
        assert planned.request.inputs["s"].tolist() == names.tolist()
        assert planned.request.policy.deadline == pytest.approx(105.0)
    assert plans.get(body[: int(length)]) is not None
    with_id, length = _body(x, names, id="req-7")
    assert decode_infer_request(with_id, length, "m", "1", {}, LIMITS, 0.0, plans).request.req_id == "req-7"
    assert plans.get(with_id[: int(length)]) is None  # an id is one request's: its header is not kept


@pytest.mark.parametrize("cut, message", [(4, "runs past the binary data"), (-4, "4 bytes of binary data belong to no input")])
def test_a_remembered_header_with_bytes_that_do_not_fit_is_refused_as_a_fresh_one_is(cut, message):
    plans = HeaderPlans()
    x = np.ones((2, 3), np.float32)
    body, length = _body(x, np.array([b"a", b"b"], dtype=object))
    decode_infer_request(body, length, "m", None, {}, LIMITS, 0.0, plans)
    bad = body[:-cut] if cut > 0 else body + b"\0" * -cut
    for with_plans in (plans, None):
        with pytest.raises(InvalidInput, match=message):
            decode_infer_request(bad, length, "m", None, {}, LIMITS, 0.0, with_plans)


def test_headers_with_json_data_and_refused_headers_are_not_remembered():
    plans = HeaderPlans()
    header = orjson.dumps({"inputs": [
        {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]},
        {"name": "y", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}},
    ]})
    body = header + np.ones(1, np.float32).tobytes()
    decode_infer_request(body, str(len(header)), "m", None, {}, LIMITS, 0.0, plans)
    assert plans.get(header) is None
    refused = orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                        "parameters": {"binary_data_size": 4}}], "parameters": {"binary_data_output": "yes"}})
    for _ in range(2):
        with pytest.raises(InvalidInput, match="'binary_data_output' must be true or false"):
            decode_infer_request(refused + b"\0" * 4, str(len(refused)), "m", None, {}, LIMITS, 0.0, plans)
    assert plans.get(refused) is None
