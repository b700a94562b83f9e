"""The clock an optimize run keeps while the server may pause it.

An in-server run yields to live load: the server stops the child's process group (SIGSTOP) while
its models serve and continues it (SIGCONT) once they are quiet (optimize/yielding.py). Time spent
stopped is not the run's own: a distillation budget would lose steps to it and a timed inference
would count it as latency. So, before each SIGCONT, the server writes the total seconds the job has
been stopped to `<job folder>/paused_s`, and the child reads it on the next reading of this clock
after a SIGCONT arrived (a counter its handler bumps), never on every reading.

One clock per process, like the signal handler it rests on: `install` is called once by the worker;
a run outside the server (the command line) never installs it, and the clock is plain monotonic.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

PAUSED_FILE = "paused_s"
PAUSABLE_FILE = "pausable"
"""Written by the child once it may be stopped: it has asked the kernel to end it with the server
(a stopped process runs no lifeline thread) and listens for SIGCONT. Before that, it is not stopped."""


class PauseClock:
    """Monotonic seconds less the seconds the server kept this process stopped."""

    def __init__(self) -> None:
        self._file: Path | None = None
        self.num_resumes = 0
        """SIGCONTs received; a timed span during which it changed was interrupted by a pause."""
        self._seen_resumes = 0
        self._paused_s = 0.0

    def install(self, job_dir: Path) -> None:
        """Listen for SIGCONT, then tell the server this process may be stopped."""
        self._file = job_dir / PAUSED_FILE
        signal.signal(signal.SIGCONT, self._on_resume)
        signal.siginterrupt(signal.SIGCONT, False)  # a blocking call the signal lands in restarts
        (job_dir / PAUSABLE_FILE).touch()

    def _on_resume(self, signum, frame) -> None:
        self.num_resumes += 1

    def paused_s(self) -> float:
        if self._file is not None and self._seen_resumes != self.num_resumes:
            self._seen_resumes = self.num_resumes
            try:
                self._paused_s = float(self._file.read_text())
            except (OSError, ValueError):
                pass  # written atomically; absent before the first pause
        return self._paused_s

    def now(self) -> float:
        """Seconds on a monotonic clock that stands still while the process is stopped."""
        return time.monotonic() - self.paused_s()


CLOCK = PauseClock()


def is_pausable(job_dir: Path) -> bool:
    return (job_dir / PAUSABLE_FILE).is_file()


def write_paused_s(job_dir: Path, paused_s: float) -> None:
    """The server's side: the job's total stopped seconds, written whole before it continues the child."""
    tmp = job_dir / f".{PAUSED_FILE}.tmp"
    tmp.write_text(f"{paused_s:.6f}")
    tmp.replace(job_dir / PAUSED_FILE)
