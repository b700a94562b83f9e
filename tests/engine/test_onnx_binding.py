"""ONNX Runtime IO binding (the CUDA path) run on CPU: the same answers as plain session.run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest

from mlserve.engine import create_backend
from mlserve.engine.onnx_backend import OnnxBackend
from mlserve.examples import write_mixed_onnx, write_mlp_onnx
from mlserve.spec import DATATYPE_TO_NUMPY, ModelConfig
from tests.models import DATATYPES, write_doubling_onnx

BATCH_SIZES = (1, 5, 64, 2, 33)
NUMERIC = tuple(d for d in DATATYPES if d != "BYTES")


def _values(datatype: str, rows: int, rng: np.random.Generator, width: int = 3) -> np.ndarray:
    dtype = np.dtype(DATATYPE_TO_NUMPY[datatype])
    if dtype == np.bool_:
        return rng.random((rows, width)) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, (rows, width), dtype=dtype, endpoint=True)
    return rng.standard_normal((rows, width)).astype(dtype)


def _loaded(folder, io_binding: bool | None) -> OnnxBackend:
    backend = OnnxBackend(ModelConfig(), io_binding=io_binding)
    backend.load(folder, "cpu")
    return backend


def test_cpu_default_is_plain_session_run(tmp_path):
    write_mlp_onnx(tmp_path / "model.onnx", seed=4)
    assert not _loaded(tmp_path, None).is_io_bound
    assert not create_backend("onnx", ModelConfig()).is_io_bound  # before load: nothing bound
    assert _loaded(tmp_path, True).is_io_bound


@pytest.mark.parametrize("datatype", NUMERIC)
def test_io_binding_equals_session_run_for_every_datatype(tmp_path, datatype):
    write_doubling_onnx(tmp_path / "model.onnx", datatype)
    bound, plain = _loaded(tmp_path, True), _loaded(tmp_path, False)
    rng = np.random.default_rng(7)
    for rows in BATCH_SIZES:
        x = _values(datatype, rows, rng)
        expected = ~x if datatype == "BOOL" else x + x
        got_bound, got_plain = bound.infer({"x": x})["y"], plain.infer({"x": x})["y"]
        assert got_bound.dtype == got_plain.dtype == x.dtype
        np.testing.assert_array_equal(got_bound, got_plain)
        np.testing.assert_array_equal(got_bound, expected)


def test_io_binding_mlp_matches_onnxruntime_over_batch_sizes(tmp_path):
    write_mlp_onnx(tmp_path / "model.onnx", seed=3)
    bound = _loaded(tmp_path, True)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for rows in BATCH_SIZES:
        x = rng.standard_normal((rows, 768), dtype=np.float32)
        np.testing.assert_allclose(bound.infer({"x": x})["y"], session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_io_binding_takes_non_contiguous_inputs(tmp_path):
    write_doubling_onnx(tmp_path / "model.onnx", "INT32")
    x = np.arange(36, dtype=np.int32).reshape(6, 6)[::2, ::2]
    np.testing.assert_array_equal(_loaded(tmp_path, True).infer({"x": x})["y"], x + x)


def test_string_models_fall_back_to_session_run(tmp_path):
    write_mixed_onnx(tmp_path / "model.onnx")
    backend = _loaded(tmp_path, True)
    assert not backend.is_io_bound
    a = np.array([[1, -2, 3, -4]], np.float32)
    b = np.array([[1, 2, 3, 4]], np.int64)
    s = np.array([[b"hi"]], dtype=object)
    out = backend.infer({"a": a, "b": b, "s": s})
    np.testing.assert_array_equal(out["sum"], a + b)
    assert out["s_echo"][0, 0] == b"hi"


def test_an_answer_never_aliases_the_next_batch(tmp_path):
    write_doubling_onnx(tmp_path / "model.onnx", "FP32")
    backend = _loaded(tmp_path, True)
    first = backend.infer({"x": np.full((4, 3), 1, np.float32)})["y"]
    kept = first.copy()
    second = backend.infer({"x": np.full((4, 3), 5, np.float32)})["y"]
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_array_equal(second, np.full((4, 3), 10, np.float32))
    assert not np.shares_memory(first, second)


def test_worker_threads_each_get_their_own_binding(tmp_path):
    write_doubling_onnx(tmp_path / "model.onnx", "INT64", width=64)
    backend = _loaded(tmp_path, True)

    def run(i: int) -> bool:
        x = np.full((1 + i % 7, 64), i, np.int64)
        return bool(np.array_equal(backend.infer({"x": x})["y"], x + x))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(run, range(200)))
