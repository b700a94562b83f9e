"""JSON lines: one object per line, `{"x": [...], ...}` in, `{"row": i, "y": [...]}` out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from mlserve.errors import InvalidInput
from mlserve.jobs.rows import ROW_COLUMN, Chunk, RowFailure, empty_inputs, replace_durably, to_row
from mlserve.spec import TensorSpec

_READ_BLOCK = 1 << 20


def count_lines(path: Path) -> int:
    """Non-blank lines, read in blocks so a file larger than memory is fine."""
    count = 0
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                count += 1
    return count


class JsonlReader:
    """Streams rows from a JSON-lines file; a line that is not a valid row becomes a RowFailure."""

    def __init__(self, path: Path, specs: tuple[TensorSpec, ...]) -> None:
        self._specs = specs
        self._names = {s.name for s in specs}
        self.num_rows: int | None = count_lines(path)
        self._fh: BinaryIO = open(path, "rb", buffering=_READ_BLOCK)
        self._row = 0

    def seek(self, state: dict[str, Any]) -> None:
        self._fh.seek(int(state.get("offset", 0)))
        self._row = int(state.get("row", 0))

    def read(self, max_rows: int) -> Chunk | None:
        first, good, rows, failures = self._row, [], [], []
        shapes: tuple | None = None
        while self._row - first < max_rows:
            start = self._fh.tell()
            line = self._fh.readline()
            if not line:
                break
            if not line.strip():
                continue
            try:
                values = self._parse(line)
            except ValueError as exc:
                failures.append(RowFailure(self._row, str(exc)))
                self._row += 1
                continue
            row_shapes = tuple(v.shape for v in values.values())
            if shapes is not None and row_shapes != shapes:
                self._fh.seek(start)  # rows of another shape start the next chunk: one chunk stacks
                break
            shapes = row_shapes
            good.append(values)
            rows.append(self._row)
            self._row += 1
        if self._row == first:
            return None
        inputs = empty_inputs(self._specs)
        if good:
            inputs = {s.name: np.stack([g[s.name] for g in good]) for s in self._specs}
        state = {"offset": self._fh.tell(), "row": self._row}
        return Chunk(first, self._row - first, np.asarray(rows, dtype=np.int64), inputs, failures, state)

    def _parse(self, line: bytes) -> dict[str, np.ndarray]:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError("each line must be a JSON object of input name -> value")
        unknown = set(obj) - self._names
        if unknown:
            raise ValueError(f"unknown input(s) {sorted(unknown)}; the model takes {sorted(self._names)}")
        missing = self._names - set(obj)
        if missing:
            raise ValueError(f"missing input(s) {sorted(missing)}")
        return {s.name: to_row(obj[s.name], s) for s in self._specs}

    def close(self) -> None:
        self._fh.close()


class AppendFile:
    """An append-only file that a checkpoint can cut back to a committed length.

    Written at `partial` and renamed to `final` by finish() (the two may be the same path)."""

    def __init__(self, final: Path, partial: Path | None = None) -> None:
        self.final = final
        self.partial = partial or final
        self._fh: BinaryIO | None = None
        self._is_synced = False
        """Nothing appended since the last sync (an errors file with no bad row costs no fsync)."""

    def create(self, replace: bool) -> None:
        """A new, empty partial file, created exclusively (O_EXCL follows no link); `replace` removes
        what is at its path first."""
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        if replace:
            self.partial.unlink(missing_ok=True)
        fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._fh = os.fdopen(fd, "wb")
        self._is_synced = False

    def restore(self, state: dict[str, Any] | None) -> None:
        if state is None:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.partial, "wb")
            self._is_synced = False
            return
        if self.partial != self.final and not self.partial.exists() and self.final.exists():
            os.replace(self.final, self.partial)  # finished once but not recorded: take it back
        self._fh = open(self.partial, "r+b")
        self._fh.truncate(int(state["bytes"]))
        self._fh.seek(0, os.SEEK_END)
        self._is_synced = False

    def append(self, data: bytes) -> None:
        assert self._fh is not None, "append before restore"
        self._fh.write(data)
        self._is_synced = False

    def commit(self) -> dict[str, Any]:
        assert self._fh is not None, "commit before restore"
        if not self._is_synced:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._is_synced = True
        return {"bytes": self._fh.tell()}

    def finish(self) -> None:
        self.close()
        if self.partial != self.final and self.partial.exists():
            replace_durably(self.partial, self.final)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _text(value: Any) -> Any:
    """BYTES outputs as JSON strings (nested lists kept)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


class LinesWriter:
    """A writer of JSON lines into one partial file, renamed when the run finishes; a format supplies
    write()."""

    def __init__(self, path: Path) -> None:
        self._file = AppendFile(path, path.with_name(path.name + ".partial"))

    def restore(self, state: dict[str, Any] | None) -> None:
        self._file.restore(state)

    def commit(self) -> dict[str, Any]:
        return self._file.commit()

    def finish(self) -> None:
        self._file.finish()

    def cleanup(self) -> None:
        """Nothing to remove: finish() renamed the one partial file."""

    def close(self) -> None:
        self._file.close()


class JsonlWriter(LinesWriter):
    """One line per answered row: its input row index and every output, in input order."""

    def write(self, rows: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
        lines = []
        for i, row in enumerate(rows.tolist()):
            record = {ROW_COLUMN: row}
            for name, array in outputs.items():
                value = array[i]
                if array.dtype == object:
                    value = _text(value.tolist() if isinstance(value, np.ndarray) else value)
                record[name] = value
            lines.append(orjson.dumps(record, option=option))
        self._file.append(b"".join(lines))


class ErrorsFile:
    """`{"row": i, "error": "..."}` per failed row, beside the output."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = AppendFile(path)

    def create(self, replace: bool) -> None:
        try:
            self._file.create(replace)
        except FileExistsError:
            raise InvalidInput(f"errors {self.path} exists; start over with overwrite") from None

    def restore(self, state: dict[str, Any] | None) -> None:
        self._file.restore(state)

    def write(self, failures: list[RowFailure]) -> None:
        if failures:
            self._file.append(b"".join(
                orjson.dumps({ROW_COLUMN: f.row, "error": f.reason}, option=orjson.OPT_APPEND_NEWLINE)
                for f in failures
            ))

    def commit(self) -> dict[str, Any]:
        return self._file.commit()

    def close(self) -> None:
        self._file.close()
