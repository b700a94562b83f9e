"""Which reader and writer a file gets, by its suffix."""

from __future__ import annotations

from pathlib import Path

from mlserve.errors import InvalidInput
from mlserve.jobs.rows import Reader, Writer
from mlserve.spec import TensorSpec

FORMATS = (".npz", ".jsonl", ".parquet")


def format_of(path: Path, known: tuple[str, ...] = FORMATS) -> str:
    suffix = path.suffix.lower()
    if suffix not in known:
        raise InvalidInput(f"{path.name}: batch files {'for this model ' if known != FORMATS else ''}"
                           f"must end in {', '.join(known)}")
    return suffix


def open_reader(path: Path, specs: tuple[TensorSpec, ...]) -> Reader:
    kind = format_of(path)
    if not path.is_file():
        raise InvalidInput(f"input {path} is not a file")
    if kind == ".npz":
        from mlserve.jobs.npz import NpzReader

        return NpzReader(path, specs)
    if kind == ".jsonl":
        from mlserve.jobs.jsonl import JsonlReader

        return JsonlReader(path, specs)
    from mlserve.jobs.parquet import ParquetReader

    return ParquetReader(path, specs)


def open_writer(path: Path, specs: tuple[TensorSpec, ...]) -> Writer:
    kind = format_of(path)
    if kind == ".npz":
        from mlserve.jobs.npz import NpzWriter

        return NpzWriter(path, specs)
    if kind == ".jsonl":
        from mlserve.jobs.jsonl import JsonlWriter

        return JsonlWriter(path)
    from mlserve.jobs.parquet import ParquetWriter

    return ParquetWriter(path, specs)
