"""The upload writer's pure parts: model.toml written back, file paths that may not leave a version."""

from __future__ import annotations

import tomllib

import pytest

from mlserve.errors import InvalidInput
from mlserve.spec import parse_model_config
from mlserve.registry.upload import check_file_path, checked_toml, toml_text

DESIGN_EXAMPLE = {
    "backend": "onnx", "device": "cpu", "max_batch_size": 64, "max_queue_delay_us": 2000,
    "preferred_batch_sizes": [16, 32, 64], "max_queue_size": 1024, "instances": 1, "intra_op_threads": 1,
    "version_policy": {"latest": 1},
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 768]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}, {"name": "s", "datatype": "BYTES", "shape": [-1]}],
    "traffic": {"split": {"1": 90, "2": 10}, "sticky_key": "header:X-User-Id",
                "shadow": {"version": "3", "percent": 100}, "fallback": "previous"},
    "drift": {"reference": "reference.npz", "window": 10000, "psi_warn": 0.1, "psi_alert": 0.25},
}


def test_model_toml_round_trips():
    text = toml_text(DESIGN_EXAMPLE)
    assert tomllib.loads(text) == DESIGN_EXAMPLE
    assert checked_toml(DESIGN_EXAMPLE) == text
    parse_model_config(tomllib.loads(text))


def test_a_table_that_is_not_a_model_config_is_refused():
    with pytest.raises(InvalidInput, match="max_batch_size"):
        checked_toml({"max_batch_size": -1})


@pytest.mark.parametrize("spec", [
    "1/../x", "1//x", "1/.hidden", "0/model.onnx", "01/model.onnx", "v1/model.onnx", "1/", "1/a\\\\b",
    "1/SHA256SUMS", "/1/model.onnx", "1/./model.onnx",
])
def test_paths_that_could_leave_the_version_are_refused(spec):
    with pytest.raises(InvalidInput):
        check_file_path(spec)


def test_plain_paths_are_taken():
    assert check_file_path("2/model.onnx") == (2, "model.onnx")
    assert check_file_path("12/tokenizer/vocab.json") == (12, "tokenizer/vocab.json")
