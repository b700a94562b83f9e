"""Which numbers drift is measured on: tensors -> named one-value-per-row features.

A 1-D tensor is one feature; a 2-D tensor with few columns gives one feature per column; anything
larger is summarised per row (mean, standard deviation, L2 norm). A 2-D float output with several
columns is also read as a classifier: its per-row argmax is a feature whose bins are the classes.
"""

from __future__ import annotations

import numpy as np


def _is_numeric(array: np.ndarray) -> bool:
    return array.dtype.kind in "biuf"


def _rows(array: np.ndarray) -> np.ndarray:
    """(rows, values) view as float64: one row per sample."""
    flat = array.reshape(array.shape[0], -1) if array.ndim >= 1 else array.reshape(1, 1)
    return flat.astype(np.float64, copy=False)


def tensor_features(name: str, array: np.ndarray, max_columns: int, is_output: bool) -> dict[str, np.ndarray]:
    """Named feature columns of one tensor (each of shape (rows,)); non-numeric tensors give none."""
    if not _is_numeric(array):
        return {}
    if array.ndim <= 1:
        return {name: _rows(array.reshape(-1, 1))[:, 0]}
    out: dict[str, np.ndarray] = {}
    if array.ndim == 2 and array.shape[1] <= max_columns:
        rows = _rows(array)
        for i in range(rows.shape[1]):
            out[f"{name}[{i}]"] = rows[:, i]
    else:
        # Two passes over the tensor (sum, sum of squares), accumulated in float64 without a copy.
        rows = array.reshape(array.shape[0], -1)
        width = max(rows.shape[1], 1)
        total = rows.sum(axis=1, dtype=np.float64)
        squares = np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
        mean = total / width
        out[f"{name}.mean"] = mean
        out[f"{name}.std"] = np.sqrt(np.maximum(squares / width - mean * mean, 0.0))
        out[f"{name}.norm"] = np.sqrt(squares)
    if is_output and array.ndim == 2 and array.dtype.kind == "f" and rows.shape[1] > 1:
        out[f"{name}.class"] = np.argmax(array.reshape(array.shape[0], -1), axis=1).astype(np.float64)
    return out


def extract(
    inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], max_columns: int
) -> dict[str, np.ndarray]:
    """Every feature of one request or batch: inputs first, then outputs."""
    features: dict[str, np.ndarray] = {}
    for name in sorted(inputs):
        features.update(tensor_features(name, inputs[name], max_columns, is_output=False))
    for name in sorted(outputs):
        features.update(tensor_features(name, outputs[name], max_columns, is_output=True))
    return features
