"""NumPy .npz: one array per input in, one array per output plus `row` out; streamed both ways."""

from __future__ import annotations

import os
import shutil
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from mlserve.errors import InferenceFailed, InvalidInput
from mlserve.jobs.rows import ROW_COLUMN, Chunk, numpy_dtype, replace_durably, row_shape, shape_fits
from mlserve.spec import TensorSpec

_COPY_BLOCK = 16 << 20
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
"""A zip local file header up to its name: signature, versions, flags, times, CRC, sizes, name and extra lengths."""


def _open_member(archive: zipfile.ZipFile, path: Path, name: str) -> _Member:
    info = archive.getinfo(f"{name}.npy")
    stored = info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1
    fh: BinaryIO = open(path, "rb") if stored else archive.open(info)
    start = _data_start(fh, info) if stored else 0
    fh.seek(start)
    version = np.lib.format.read_magic(fh)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(fh)
    if fortran_order or dtype.hasobject:
        fh.close()
        raise InvalidInput(f"array {name!r}: only C-ordered arrays of numbers can be streamed from .npz")
    member = _Member(fh, tuple(shape), dtype, fh.tell())
    if stored:  # zipfile checked this CRC as it read; a straight read checks it itself
        member.end = start + info.file_size
        member.crc_expected = info.CRC
        fh.seek(start)
        member.crc_head = zlib.crc32(fh.read(member.offset - start))
    return member


def _data_start(fh: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes begin: after its local header, whose name and extra field
    lengths may differ from the central directory's."""
    fh.seek(info.header_offset)
    header = fh.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise InvalidInput(f"member {info.filename!r}: bad local zip header")
    name_len, extra_len = _LOCAL_HEADER.unpack(header)[-2:]
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


@dataclass(slots=True)
class _Member:
    """One input array inside the zip. A stored (np.savez) member is read straight from the file
    into the chunk's array, one copy and no zip layer; a compressed one goes through zipfile."""

    fh: BinaryIO
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int
    """Where row 0 begins in `fh`."""
    end: int = 0
    crc_expected: int | None = None
    crc_head: int = 0
    crc: int | None = None
    """Running CRC of a stored member read from its start; None once a seek made it unknowable."""

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))

    def seek(self, row: int) -> None:
        self.fh.seek(self.offset + row * self.row_bytes)
        self.crc = self.crc_head if row == 0 and self.crc_expected is not None else None

    def read(self, name: str, first: int, count: int) -> np.ndarray:
        array = np.empty((count, *self.shape[1:]), dtype=self.dtype)
        if self.fh.readinto(memoryview(array).cast("B")) != array.nbytes:
            raise InvalidInput(f"array {name!r} ends early: the file is truncated")
        if self.crc is not None:
            self.crc = zlib.crc32(array, self.crc)
            done = first + count == self.shape[0] and self.offset + self.shape[0] * self.row_bytes == self.end
            if done and self.crc != self.crc_expected:
                raise InvalidInput(f"array {name!r} is corrupt: its zip CRC does not match its bytes")
        return array


class NpzReader:
    """Reads rows straight from each array's bytes inside the zip: memory stays at one chunk."""

    def __init__(self, path: Path, specs: tuple[TensorSpec, ...]) -> None:
        self._archive = zipfile.ZipFile(path)
        names = {n[:-4] for n in self._archive.namelist() if n.endswith(".npy")}
        wanted = {s.name for s in specs}
        if names != wanted:
            raise InvalidInput(f"{path.name} holds arrays {sorted(names)}; the model takes {sorted(wanted)}")
        self._specs = specs
        self._members: dict[str, _Member] = {}
        lengths = set()
        try:
            for spec in specs:
                member = self._members[spec.name] = _open_member(self._archive, path, spec.name)
                if not member.shape or not shape_fits(row_shape(spec), member.shape[1:]):
                    raise InvalidInput(f"array {spec.name!r} has shape {list(member.shape)}; the model takes "
                                       f"{list(spec.shape)}")
                if not np.can_cast(member.dtype, numpy_dtype(spec), "same_kind"):
                    raise InvalidInput(f"array {spec.name!r} is {member.dtype}; the model takes {spec.datatype}")
                lengths.add(member.shape[0])
            if len(lengths) > 1:
                raise InvalidInput(f"the arrays in {path.name} disagree on their number of rows: {sorted(lengths)}")
        except BaseException:
            self.close()
            raise
        self.num_rows: int | None = lengths.pop() if lengths else 0
        self._row = 0
        self.seek({})

    def seek(self, state: dict[str, Any]) -> None:
        self._row = int(state.get("row", 0))
        for member in self._members.values():
            member.seek(self._row)

    def read(self, max_rows: int) -> Chunk | None:
        count = min(max_rows, self.num_rows - self._row)
        if count <= 0:
            return None
        inputs = {}
        for spec in self._specs:
            array = self._members[spec.name].read(spec.name, self._row, count)
            inputs[spec.name] = array.astype(numpy_dtype(spec), copy=False)
        first = self._row
        self._row += count
        rows = np.arange(first, self._row, dtype=np.int64)
        return Chunk(first, count, rows, inputs, [], {"row": self._row})

    def close(self) -> None:
        for member in self._members.values():
            member.fh.close()
        self._members = {}
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
