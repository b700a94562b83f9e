"""Triton's classification extension: an output asked for with `classification = k` comes back as
its top k entries per row, BYTES strings "score:index" or "score:index:label".

Labels are the lines of `labels.txt` in the version folder, else in the model folder (line i names
class i). Scores print as Triton prints them (C++ std::to_string: six decimals for floats).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mlserve.errors import InvalidInput
from mlserve.spec import ModelInfo

LABELS_FILE = "labels.txt"


def check_class_counts(info: ModelInfo, class_counts: Mapping[str, int]) -> None:
    datatypes = {s.name: s.datatype for s in info.outputs}
    for name in class_counts:
        if datatypes.get(name) in ("BYTES", None):
            what = "a BYTES output" if name in datatypes else "not an output of this model"
            raise InvalidInput(f"output {name!r} cannot be classified: it is {what}")


def labels_path(version_path: Path | None) -> Path | None:
    if version_path is None:
        return None
    for folder in (version_path, version_path.parent):
        if (folder / LABELS_FILE).is_file():
            return folder / LABELS_FILE
    return None


def read_labels(version_path: Path | None) -> tuple[str, ...]:
    path = labels_path(version_path)
    if path is None:
        return ()
    return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines())


def _score(value: Any, is_float: bool) -> str:
    return f"{value:f}" if is_float else str(int(value))


def classify(array: np.ndarray, k: int, labels: tuple[str, ...], is_batched: bool) -> np.ndarray:
    """[rows, ...] (batched) or [...] -> [rows, k] or [k] BYTES: the k largest, largest first."""
    rows = array.reshape(array.shape[0], -1) if is_batched and array.ndim else array.reshape(1, -1)
    k = min(k, rows.shape[1])
    is_float = rows.dtype.kind == "f"
    # stable sort on the negated values keeps the lower index first among equal scores
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    out = np.empty(order.shape, dtype=object)
    for r, indexes in enumerate(order):
        for j, index in enumerate(indexes):
            text = f"{_score(rows[r, index], is_float)}:{index}"
            if index < len(labels) and labels[index]:
                text += f":{labels[index]}"
            out[r, j] = text.encode("utf-8")
    return out if is_batched and array.ndim else out.reshape(k)
