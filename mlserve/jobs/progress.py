"""Rows done, rate and ETA of a batch run, and the progress bar the offline run draws."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO


@dataclass(slots=True)
class Progress:
    """Rows done against the total, and the rate since this run (or resume) began."""

    rows_total: int | None
    rows_done: int = 0
    rows_failed: int = 0
    started_rows: int = 0
    started_at: float = 0.0

    def start(self, rows_done: int, rows_failed: int, now: float | None = None) -> None:
        self.rows_done = self.started_rows = rows_done
        self.rows_failed = rows_failed
        self.started_at = time.monotonic() if now is None else now

    def update(self, rows_done: int, rows_failed: int) -> None:
        self.rows_done, self.rows_failed = rows_done, rows_failed

    def rows_per_s(self, now: float | None = None) -> float:
        elapsed = (time.monotonic() if now is None else now) - self.started_at
        return (self.rows_done - self.started_rows) / elapsed if elapsed > 0 else 0.0

    def eta_s(self, now: float | None = None) -> float | None:
        rate = self.rows_per_s(now)
        if self.rows_total is None or rate <= 0:
            return None
        return max(0.0, (self.rows_total - self.rows_done) / rate)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ProgressBar:
    """Redraws one line on a terminal (at most 10 times a second); elsewhere a line every 10 s."""

    def __init__(self, progress: Progress, out: TextIO = sys.stderr, width: int = 30) -> None:
        self._progress = progress
        self._out = out
        self._width = width
        self._is_tty = out.isatty()
        self._last = 0.0

    def line(self) -> str:
        p = self._progress
        total = p.rows_total
        share = p.rows_done / total if total else 0.0
        filled = int(share * self._width)
        bar = "#" * filled + "-" * (self._width - filled)
        of = f"/{total}" if total is not None else ""
        failed = f", {p.rows_failed} failed" if p.rows_failed else ""
        return (f"[{bar}] {share:6.1%} {p.rows_done}{of} rows{failed}, "
                f"{p.rows_per_s():,.0f} rows/s, ETA {_clock(p.eta_s())}")

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (0.1 if self._is_tty else 10.0):
            return
        self._last = now
        self._out.write(("\r" + self.line()) if self._is_tty else self.line() + "\n")
        self._out.flush()

    def close(self) -> None:
        self.draw(force=True)
        if self._is_tty:
            self._out.write("\n")
            self._out.flush()
