"""Processes as /proc shows them: a server's children, and waiting for processes to be gone."""

from __future__ import annotations

import time
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from the state on (the name may hold spaces), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def is_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie no one has reaped yet."""
    fields = _stat(pid)
    return fields is None or fields[0] in ("Z", "X")


def wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    """Poll until every pid is gone; returns those still running at the deadline."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if not is_gone(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive
