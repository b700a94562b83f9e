"""Parquet through pyarrow: one column per input in (scalars or lists), `row` plus one column per
output out. Read by record batches from the row group that holds the resume point; written as
committed part files merged into one file at the end."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlserve.errors import InferenceFailed, InvalidInput
from mlserve.jobs.rows import (
    ROW_COLUMN, Chunk, RowFailure, empty_inputs, numpy_dtype, replace_durably, row_shape, to_row,
)
from mlserve.spec import TensorSpec

_BATCH_ROWS = 1024
"""Rows per Arrow record batch read (pyarrow's default of 65536 wide rows would dwarf a chunk). Parquet
decodes a column chunk of a row group at a time, so memory is bounded by the file's row groups too."""


class ParquetReader:
    """Streams rows from a Parquet file; a null or mis-shaped cell makes that row a RowFailure."""

    def __init__(self, path: Path, specs: tuple[TensorSpec, ...]) -> None:
        self._file = pq.ParquetFile(path)
        names = set(self._file.schema_arrow.names)
        wanted = {s.name for s in specs}
        if names != wanted:
            raise InvalidInput(f"{path.name} has columns {sorted(names)}; the model takes {sorted(wanted)}")
        self._specs = specs
        self.num_rows: int | None = self._file.metadata.num_rows
        self._row = 0
        self._batches = None
        self._pending: pa.RecordBatch | None = None

    def seek(self, state: dict[str, Any]) -> None:
        self._row = int(state.get("row", 0))
        start, group = 0, 0
        metadata = self._file.metadata
        while group < metadata.num_row_groups and start + metadata.row_group(group).num_rows <= self._row:
            start += metadata.row_group(group).num_rows
            group += 1
        self._batches = self._file.iter_batches(
            batch_size=_BATCH_ROWS, row_groups=range(group, metadata.num_row_groups),
            columns=[s.name for s in self._specs])
        self._pending = None
        skip = self._row - start
        while skip > 0:
            batch = self._next_batch()
            if batch is None:
                break
            self._pending = batch.slice(skip) if batch.num_rows > skip else None
            skip -= min(skip, batch.num_rows)

    def _next_batch(self) -> pa.RecordBatch | None:
        if self._pending is not None:
            batch, self._pending = self._pending, None
            return batch
        return next(self._batches, None)

    def read(self, max_rows: int) -> Chunk | None:
        if self._batches is None:
            self.seek({})
        parts, count = [], 0
        while count < max_rows:
            batch = self._next_batch()
            if batch is None:
                break
            if count + batch.num_rows > max_rows:
                batch, self._pending = batch.slice(0, max_rows - count), batch.slice(max_rows - count)
            parts.append(batch)
            count += batch.num_rows
        if not count:
            return None
        table = pa.Table.from_batches(parts)
        first = self._row
        self._row += count
        rows, inputs, failures = _decode(table, self._specs, first)
        return Chunk(first, count, rows, inputs, failures, {"row": self._row})

    def close(self) -> None:
        self._file.close()


def _fast_column(column: pa.ChunkedArray, spec: TensorSpec, num_rows: int) -> np.ndarray | None:
    """Numbers without nulls, every list of the model's length: one flatten, no per-row work."""
    if spec.datatype == "BYTES" or column.null_count:
        return None
    array = column.combine_chunks()
    dims = []
    for want in row_shape(spec):
        if not pa.types.is_list(array.type) and not pa.types.is_fixed_size_list(array.type) \
                and not pa.types.is_large_list(array.type):
            return None
        lengths = pc.list_value_length(array)
        if lengths.null_count or len(array) == 0:
            return None
        got = pc.min_max(lengths)
        if got["min"].as_py() != got["max"].as_py() or want not in (-1, got["min"].as_py()):
            return None
        dims.append(got["min"].as_py())
        array = array.flatten()
        if array.null_count:
            return None
    if pa.types.is_nested(array.type) or not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)
                                              or pa.types.is_boolean(array.type)):
        return None
    values = array.to_numpy(zero_copy_only=False)
    if not np.can_cast(values.dtype, numpy_dtype(spec), "same_kind"):
        return None
    return values.astype(numpy_dtype(spec), copy=False).reshape(num_rows, *dims)


def _decode(table: pa.Table, specs: tuple[TensorSpec, ...], first: int):
    """Good rows stacked per input, and a RowFailure for each bad row (null, wrong length, wrong type)."""
    n = table.num_rows
    fast = {s.name: _fast_column(table.column(s.name), s, n) for s in specs}
    if all(v is not None for v in fast.values()):
        return np.arange(first, first + n, dtype=np.int64), fast, []
    columns = {s.name: table.column(s.name).to_pylist() for s in specs}
    good, rows, failures, shapes = [], [], [], None
    for i in range(n):
        try:
            values = {s.name: _cell(columns[s.name][i], s) for s in specs}
            row_shapes = tuple(v.shape for v in values.values())
            if shapes is not None and row_shapes != shapes:
                raise ValueError(f"row shapes {list(row_shapes)} differ from this chunk's {list(shapes)}")
        except ValueError as exc:
            failures.append(RowFailure(first + i, str(exc)))
            continue
        shapes = row_shapes
        good.append(values)
        rows.append(first + i)
    if not good:
        return np.asarray(rows, dtype=np.int64), empty_inputs(specs), failures
    inputs = {s.name: np.stack([g[s.name] for g in good]) for s in specs}
    return np.asarray(rows, dtype=np.int64), inputs, failures


def _cell(value: Any, spec: TensorSpec) -> np.ndarray:
    if value is None:
        raise ValueError(f"input {spec.name!r} is null")
    return to_row(value, spec)


def _to_arrow(array: np.ndarray) -> pa.Array:
    if array.dtype == object:
        flat = pa.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in array.ravel()],
                        pa.string())
    else:
        flat = pa.array(np.ascontiguousarray(array).reshape(-1))
    return _nest(flat, array.shape[1:])


def _nest(flat: pa.Array, dims: tuple[int, ...]) -> pa.Array:
    for dim in reversed(dims):
        flat = pa.FixedSizeListArray.from_arrays(flat, dim)
    return flat


class ParquetWriter:
    """Each commit writes the rows since the last one as a part file (written, synced, renamed);
    finish() copies the parts, in order, into one Parquet file as row groups."""

    def __init__(self, path: Path, specs: tuple[TensorSpec, ...]) -> None:
        self._path = path
        self._specs = specs
        self._dir = path.with_name(path.name + ".partial")
        self._buffer: list[pa.Table] = []
        self._num_parts = 0

    def _part(self, index: int) -> Path:
        return self._dir / f"part-{index:06d}.parquet"

    def restore(self, state: dict[str, Any] | None) -> None:
        if state is None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir.mkdir(parents=True)
            return
        self._num_parts = int(state["parts"])
        for part in self._dir.glob("part-*.parquet"):
            if int(part.stem.split("-")[1]) >= self._num_parts:
                part.unlink()  # written after the last checkpoint: its rows run again

    def write(self, rows: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        columns = {ROW_COLUMN: pa.array(rows.astype(np.int64))}
        columns.update({name: _to_arrow(array) for name, array in outputs.items()})
        self._buffer.append(pa.table(columns))

    def commit(self) -> dict[str, Any]:
        tables = [t for t in self._buffer if t.num_rows]
        self._buffer = []
        if tables:
            part, tmp = self._part(self._num_parts), self._dir / "part.tmp"
            pq.write_table(pa.concat_tables(tables), tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            replace_durably(tmp, part)
            self._num_parts += 1
        return {"parts": self._num_parts}

    def finish(self) -> None:
        tmp = self._path.with_name(self._path.name + ".tmp")
        parts = [self._part(i) for i in range(self._num_parts)]
        schema = pq.read_schema(parts[0]) if parts else self._empty_schema()
        with pq.ParquetWriter(tmp, schema) as out:
            for part in parts:
                table = pq.read_table(part)
                if not table.schema.equals(schema):
                    raise InferenceFailed(f"outputs changed type or row shape between chunks ({part.name}); "
                                          "Parquet needs one schema")
                out.write_table(table)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        replace_durably(tmp, self._path)

    def _empty_schema(self) -> pa.Schema:
        """No row was answered: the columns the outputs would have had (unknown sizes as 0)."""
        columns = {ROW_COLUMN: pa.array([], pa.int64())}
        for spec in self._specs:
            shape = (0, *(max(d, 0) for d in row_shape(spec)))
            dtype = object if spec.datatype == "BYTES" else numpy_dtype(spec)
            columns[spec.name] = _to_arrow(np.empty(shape, dtype=dtype))
        return pa.table(columns).schema

    def cleanup(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def close(self) -> None:
        self._buffer = []

