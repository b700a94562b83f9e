"""JSON tensor data read in one pass (`_packed`) comes out as numpy's own reading of the list does,
and every list numpy must judge (nesting, booleans, strings, nulls, out-of-range integers) is left
to it."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mlserve.errors import InvalidInput
from mlserve.server.tensors import _packed, decode_json_tensor

_ATOMS = [1.5, -2.25, 0.0, -0.0, 0, 7, -3, True, False, None, "3", 2**40, 2**63 - 1, -(2**63), 2**63, 1e300, [1.0], []]


def _random_list(rng: random.Random) -> list:
    if rng.random() < 0.3:
        width = rng.randint(0, 3)
        rows = [[rng.choice(_ATOMS) for _ in range(width if rng.random() < 0.8 else rng.randint(0, 3))]
                for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.2:
            rows[-1] = rng.choice(_ATOMS)
        return rows
    return [rng.choice(_ATOMS) for _ in range(rng.randint(1, 5))]


def test_a_packed_list_equals_numpys_reading_and_the_rest_is_left_to_numpy():
    rng = random.Random(5)
    num_packed = 0
    for _ in range(5000):
        data = _random_list(rng)
        packed = _packed(data)
        try:
            reference = np.array(data)
        except (ValueError, OverflowError):
            assert packed is None, data
            continue
        if packed is None:
            continue
        num_packed += 1
        assert reference.dtype == packed.dtype, data
        np.testing.assert_array_equal(packed, reference.ravel())
    assert num_packed > 500


@pytest.mark.parametrize("data", [[True, 1.5], [None, 1.0], ["1", 2.0], [[1.0], 2.0], [[1.0, 2.0], [3.0]], [1, 2.5],
                                  [1, 2**63], [[[1.0]]]])
def test_lists_numpy_must_judge_are_not_packed(data):
    assert _packed(data) is None


def test_an_integer_past_64_bits_among_floats_is_read_as_a_float():
    """numpy would read [0.5, 10**30] as a list of mixed values; it is a list of numbers."""
    out = decode_json_tensor("x", "FP64", (2,), [0.5, 10**30])
    np.testing.assert_array_equal(out, np.array([0.5, 1e30]))
    with pytest.raises(InvalidInput, match="INT64 data cannot hold floats"):
        decode_json_tensor("x", "INT64", (2,), [0.5, 10**30])


def test_packed_rows_take_the_declared_shape():
    rows = [[float(i * 3 + j) for j in range(3)] for i in range(4)]
    out = decode_json_tensor("x", "FP32", (4, 3), rows)
    np.testing.assert_array_equal(out, np.arange(12, dtype=np.float32).reshape(4, 3))
    with pytest.raises(InvalidInput, match="12 values do not fill shape"):
        decode_json_tensor("x", "FP32", (5, 3), rows)
