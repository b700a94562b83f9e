"""What every reader and writer shares: chunks of rows, row failures, and turning values into rows."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mlserve.errors import InvalidInput
from mlserve.spec import DATATYPE_TO_NUMPY, TensorSpec

ROW_COLUMN = "row"
"""Every output carries the input row index of each answered row under this name."""


@dataclass(frozen=True, slots=True)
class RowFailure:
    """One input row that could not be answered, and why."""

    row: int
    reason: str


@dataclass(slots=True)
class Chunk:
    """Consecutive input rows read in one go: the good ones stacked per input, the bad ones explained."""

    first_row: int
    num_rows: int
    """Input rows consumed, good and bad."""
    rows: np.ndarray
    """int64 input row index of each good row, in order."""
    inputs: dict[str, np.ndarray]
    failures: list[RowFailure] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    """The reader's position after this chunk, as a checkpoint stores it."""


class Reader(Protocol):
    num_rows: int | None
    """Rows in the whole input when known up front."""

    def seek(self, state: dict[str, Any]) -> None:
        """Continue from a position a chunk's `state` gave (an empty dict: the start)."""

    def read(self, max_rows: int) -> Chunk | None:
        """The next rows, at most `max_rows`; None at the end."""

    def close(self) -> None: ...


class Writer(Protocol):
    def restore(self, state: dict[str, Any] | None) -> None:
        """Go back to exactly a committed state (None: nothing written); drops anything after it."""

    def write(self, rows: np.ndarray, outputs: dict[str, np.ndarray]) -> None: ...

    def commit(self) -> dict[str, Any]:
        """Make everything written durable; returns the state to restore to after a crash."""

    def finish(self) -> None:
        """Turn the committed parts into the output file (atomic, idempotent)."""

    def cleanup(self) -> None:
        """Remove the parts once the checkpoint records the job as done."""

    def close(self) -> None: ...


def row_shape(spec: TensorSpec) -> tuple[int, ...]:
    """A tensor's shape without its batch dimension (-1 = any)."""
    return tuple(spec.shape[1:])


def shape_fits(want: tuple[int, ...], got: tuple[int, ...]) -> bool:
    return len(want) == len(got) and all(w in (-1, g) for w, g in zip(want, got))


def numpy_dtype(spec: TensorSpec) -> np.dtype:
    return np.dtype(DATATYPE_TO_NUMPY[spec.datatype])


def to_row(value: Any, spec: TensorSpec) -> np.ndarray:
    """One row of one input from plain values (JSON, Arrow); raises ValueError saying what is wrong."""
    if spec.datatype == "BYTES":
        array = np.asarray(value, dtype=object)
        flat = [v.encode("utf-8") if isinstance(v, str) else v for v in array.flat]
        if not all(isinstance(v, bytes) for v in flat):
            raise ValueError(f"input {spec.name!r} takes strings")
        array = np.empty(array.shape, dtype=object)
        array.flat[:] = flat
    else:
        array = np.asarray(value)
        if array.dtype == object or array.dtype.kind in "USV":
            raise ValueError(f"input {spec.name!r} takes numbers, got {str(value)[:60]}")
        if array.dtype.kind == "f" and numpy_dtype(spec).kind in "iub" and not np.all(np.mod(array, 1) == 0):
            raise ValueError(f"input {spec.name!r} takes integers")
        array = array.astype(numpy_dtype(spec))
    if not shape_fits(row_shape(spec), array.shape):
        raise ValueError(f"input {spec.name!r} rows must have shape {list(row_shape(spec))}, got {list(array.shape)}")
    return array


def empty_inputs(specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    return {s.name: np.empty((0,), dtype=numpy_dtype(s)) for s in specs}


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, final: Path) -> None:
    """Rename `tmp` over `final` and make the rename itself survive a crash."""
    os.replace(tmp, final)
    fsync_dir(final.parent)


def check_output_names(names: list[str]) -> None:
    if ROW_COLUMN in names:
        raise InvalidInput(f"the model has an output named {ROW_COLUMN!r}, which batch outputs use for row indices")
