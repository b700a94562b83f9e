"""The checkpoint beside an output: which input rows are committed to it, and where each file stands.

A chunk's rows are appended and synced to the output and errors files first; then the checkpoint
is replaced atomically. After a crash anywhere, the checkpoint names a state both files can be cut
back to, and the reader seeks to the row after it: every row lands exactly once.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mlserve.jobs.rows import replace_durably

RUNNING = "running"
DONE = "done"


@dataclass(slots=True)
class Checkpoint:
    """Progress of one batch run, as stored in `<output>.checkpoint.json`."""

    model: str
    version: int
    input: str
    output: str
    errors: str
    input_bytes: int
    input_mtime_ns: int
    rows_total: int | None = None
    rows_done: int = 0
    """Input rows committed: answered (in the output) or failed (in the errors file)."""
    rows_ok: int = 0
    rows_failed: int = 0
    reader: dict[str, Any] = field(default_factory=dict)
    writer: dict[str, Any] | None = None
    errors_state: dict[str, Any] | None = None
    state: str = RUNNING

    @property
    def is_done(self) -> bool:
        return self.state == DONE


_IDENTITY = ("model", "version", "input", "output", "errors", "input_bytes", "input_mtime_ns")


def checkpoint_path(output: Path) -> Path:
    return output.with_name(output.name + ".checkpoint.json")


def load_checkpoint(path: Path) -> Checkpoint | None:
    if not path.exists():
        return None
    try:
        return Checkpoint(**orjson.loads(path.read_bytes()))
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"checkpoint {path} is unreadable: {exc}") from None


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(orjson.dumps(asdict(checkpoint)))
        fh.flush()
        os.fsync(fh.fileno())
    replace_durably(tmp, path)


def mismatch(stored: Checkpoint, fresh: Checkpoint) -> str | None:
    """What differs between the run a checkpoint records and the run asked for, or None."""
    for name in _IDENTITY:
        if getattr(stored, name) != getattr(fresh, name):
            return f"{name} was {getattr(stored, name)!r}, now {getattr(fresh, name)!r}"
    return None
