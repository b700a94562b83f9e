"""NumPy .npz: one array per input in, one array per output plus `row` out; streamed both ways."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from mlserve.errors import InferenceFailed, InvalidInput
from mlserve.jobs.rows import ROW_COLUMN, Chunk, numpy_dtype, replace_durably, row_shape, shape_fits
from mlserve.spec import TensorSpec

_COPY_BLOCK = 16 << 20


def _open_member(archive: zipfile.ZipFile, name: str) -> tuple[BinaryIO, tuple[int, ...], np.dtype]:
    fh = archive.open(f"{name}.npy")
    version = np.lib.format.read_magic(fh)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(fh)
    if fortran_order or dtype.hasobject:
        raise InvalidInput(f"array {name!r}: only C-ordered arrays of numbers can be streamed from .npz")
    return fh, shape, dtype


class NpzReader:
    """Reads rows straight from each array's bytes inside the zip: memory stays at one chunk."""

    def __init__(self, path: Path, specs: tuple[TensorSpec, ...]) -> None:
        self._archive = zipfile.ZipFile(path)
        names = {n[:-4] for n in self._archive.namelist() if n.endswith(".npy")}
        wanted = {s.name for s in specs}
        if names != wanted:
            raise InvalidInput(f"{path.name} holds arrays {sorted(names)}; the model takes {sorted(wanted)}")
        self._specs = specs
        self._members: dict[str, tuple[BinaryIO, tuple[int, ...], np.dtype, int]] = {}
        lengths = set()
        for spec in specs:
            fh, shape, dtype = _open_member(self._archive, spec.name)
            if not shape or not shape_fits(row_shape(spec), tuple(shape[1:])):
                raise InvalidInput(f"array {spec.name!r} has shape {list(shape)}; the model takes "
                                   f"{list(spec.shape)}")
            if not np.can_cast(dtype, numpy_dtype(spec), "same_kind"):
                raise InvalidInput(f"array {spec.name!r} is {dtype}; the model takes {spec.datatype}")
            self._members[spec.name] = (fh, shape, dtype, fh.tell())
            lengths.add(shape[0])
        if len(lengths) > 1:
            raise InvalidInput(f"the arrays in {path.name} disagree on their number of rows: {sorted(lengths)}")
        self.num_rows: int | None = lengths.pop() if lengths else 0
        self._row = 0

    def _row_bytes(self, name: str) -> int:
        _, shape, dtype, _ = self._members[name]
        return dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))

    def seek(self, state: dict[str, Any]) -> None:
        self._row = int(state.get("row", 0))
        for name, (fh, _, _, offset) in self._members.items():
            fh.seek(offset + self._row * self._row_bytes(name))

    def read(self, max_rows: int) -> Chunk | None:
        count = min(max_rows, self.num_rows - self._row)
        if count <= 0:
            return None
        inputs = {}
        for spec in self._specs:
            fh, shape, dtype, _ = self._members[spec.name]
            data = fh.read(count * self._row_bytes(spec.name))
            if len(data) != count * self._row_bytes(spec.name):
                raise InvalidInput(f"array {spec.name!r} ends early: the file is truncated")
            array = np.frombuffer(data, dtype=dtype).reshape(count, *shape[1:])
            inputs[spec.name] = array.astype(numpy_dtype(spec), copy=False)
        first = self._row
        self._row += count
        rows = np.arange(first, self._row, dtype=np.int64)
        return Chunk(first, count, rows, inputs, [], {"row": self._row})

    def close(self) -> None:
        for fh, *_ in self._members.values():
            fh.close()
        self._archive.close()


class NpzWriter:
    """Appends each output's raw rows to its own file under `<output>.partial/`; finish() wraps them
    into the .npz (headers written once the row count is known), copying in blocks."""

    def __init__(self, path: Path, specs: tuple[TensorSpec, ...]) -> None:
        bad = [s.name for s in specs if s.datatype == "BYTES"]
        if bad:
            raise InvalidInput(f"an .npz output cannot hold the string output(s) {bad}; write .jsonl or .parquet")
        self._path = path
        self._dir = path.with_name(path.name + ".partial")
        self._specs = specs
        self._layout: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self._files: dict[str, BinaryIO] = {}
        self._num_rows = 0

    def restore(self, state: dict[str, Any] | None) -> None:
        if state is None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir.mkdir(parents=True)
            return
        self._num_rows = int(state["rows"])
        meta = self._dir / "layout.json"
        if meta.exists():
            raw = orjson.loads(meta.read_bytes())
            self._layout = {n: (np.dtype(d), tuple(s)) for n, (d, s) in raw.items()}
        for name in self._layout:
            fh = open(self._dir / f"{name}.bin", "r+b")
            fh.truncate(self._num_rows * self._row_bytes(name))
            fh.seek(0, os.SEEK_END)
            self._files[name] = fh

    def _row_bytes(self, name: str) -> int:
        dtype, shape = self._layout[name]
        return dtype.itemsize * int(np.prod(shape, dtype=np.int64))

    def write(self, rows: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        arrays = {ROW_COLUMN: rows.astype(np.int64), **outputs}
        if not self._layout:
            self._layout = {n: (a.dtype, tuple(a.shape[1:])) for n, a in arrays.items()}
            (self._dir / "layout.json").write_bytes(orjson.dumps(
                {n: (d.str, list(s)) for n, (d, s) in self._layout.items()}))
            self._files = {n: open(self._dir / f"{n}.bin", "wb") for n in self._layout}
        for name, array in arrays.items():
            dtype, shape = self._layout[name]
            if array.dtype != dtype or tuple(array.shape[1:]) != shape:
                raise InferenceFailed(f"output {name!r} changed from {dtype}{list(shape)} to "
                                      f"{array.dtype}{list(array.shape[1:])} per row; .npz needs one row shape")
            self._files[name].write(np.ascontiguousarray(array).tobytes())
        self._num_rows += len(rows)

    def commit(self) -> dict[str, Any]:
        for fh in self._files.values():
            fh.flush()
            os.fsync(fh.fileno())
        return {"rows": self._num_rows}

    def finish(self) -> None:
        self.close()
        tmp = self._path.with_name(self._path.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, (dtype, shape) in self._final_layout().items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as out:
                    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                              "shape": (self._num_rows, *shape)}
                    np.lib.format.write_array_header_2_0(out, header)
                    self._copy_rows(name, out)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        replace_durably(tmp, self._path)

    def _final_layout(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        if self._layout:
            return self._layout
        empty = {s.name: (numpy_dtype(s), tuple(max(d, 0) for d in row_shape(s))) for s in self._specs}
        return {ROW_COLUMN: (np.dtype(np.int64), ()), **empty}

    def _copy_rows(self, name: str, out: BinaryIO) -> None:
        if name not in self._layout:
            return
        remaining = self._num_rows * self._row_bytes(name)
        with open(self._dir / f"{name}.bin", "rb") as src:
            while remaining > 0:
                block = src.read(min(_COPY_BLOCK, remaining))
                if not block:
                    raise InferenceFailed(f"output {name!r}: the partial file is shorter than its checkpoint")
                out.write(block)
                remaining -= len(block)

    def cleanup(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files = {}
