"""A lone batch on the event loop's own thread, on a short leash.

A lone request into an idle batcher (the short path, batching/guard.py) costs two thread switches
on the way through a worker thread: the loop hands the batch over and blocks, the worker wakes and
computes, the loop wakes again. A backend whose run can be stopped from another thread (ONNX
Runtime on the CPU: its terminate flag is read between two nodes) can skip both: the loop thread
runs the batch itself, with the GIL released while the engine computes, and a watchdog thread
stops the run if it is still going `LEASH_S` after it began. A stopped batch then runs again the
usual way, on a worker thread under the full hang deadline, so a model that hangs on some input
blocks the loop for at most about `LEASH_S + POLL_S`, and is then answered by the hang guard as
before. Only lone batches of models whose lone rows took under the short wait lately come here.

The watchdog is one daemon thread for the process. It looks every `POLL_S` while leashed runs
happen, and goes back to sleep once none started for `QUIET_S`; the first run after that wakes it.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from mlserve.engine.base import StoppableInfer, Tensors

LEASH_S = 0.01
"""How long a leashed run may go on before the watchdog stops it (it runs again on a worker)."""
POLL_S = LEASH_S / 2
QUIET_S = 1.0
"""The watchdog sleeps once no leashed run started for this long."""


class _Run:
    __slots__ = ("deadline", "stop", "is_stopped")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.stop: Callable[[], None] | None = None
        self.is_stopped = False

    def arm(self, stop: Callable[[], None]) -> None:
        self.stop = stop


class Leash:
    """Runs batches on the calling thread; a watchdog thread stops any that outlives `limit_s`."""

    def __init__(self, limit_s: float = LEASH_S, poll_s: float = POLL_S, quiet_s: float = QUIET_S) -> None:
        self.limit_s = limit_s
        self._poll_s = poll_s
        self._quiet_s = quiet_s
        self._runs: dict[int, _Run] = {}
        self._num_started = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._is_asleep = True
        self.num_stopped = 0

    @property
    def is_asleep(self) -> bool:
        """Whether the watchdog sleeps (no leashed run started for `quiet_s`)."""
        return self._is_asleep

    def run(self, infer: StoppableInfer, inputs: Tensors) -> Tensors | None:
        """The batch's outputs, or None if the watchdog stopped it (the caller runs it another way).
        The model's own errors propagate."""
        run = _Run(time.monotonic() + self.limit_s)
        key = id(run)
        self._runs[key] = run
        self._num_started += 1
        if self._is_asleep:
            self._wake_watchdog()
        try:
            return infer(inputs, run.arm)
        except Exception:
            if run.is_stopped:
                return None
            raise
        finally:
            del self._runs[key]

    def _wake_watchdog(self) -> None:
        with self._lock:
            self._is_asleep = False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._watch, name="mlserve-leash", daemon=True)
                self._thread.start()
            self._wake.set()

    def _watch(self) -> None:
        seen, quiet_since = -1, time.monotonic()
        while True:
            self._wake.wait()
            time.sleep(self._poll_s)
            now = time.monotonic()
            for run in list(self._runs.values()):
                if now >= run.deadline and run.stop is not None and not run.is_stopped:
                    run.is_stopped = True
                    self.num_stopped += 1
                    run.stop()
            if self._num_started != seen or self._runs:
                seen, quiet_since = self._num_started, now
            elif now - quiet_since >= self._quiet_s:
                with self._lock:
                    if self._num_started == seen and not self._runs:
                        self._is_asleep = True
                        self._wake.clear()


LEASH = Leash()
"""The process's one leash (and watchdog thread)."""
