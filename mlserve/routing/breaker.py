"""Per-version circuit breaker: closed -> open on consecutive failures or a high error rate over a
window; open -> half-open after a cool-down, when one probe goes through; the probe's result
closes it or opens it again. The clock is injected so the core is tested without sleeping."""

from __future__ import annotations

import time
from collections import deque
from enum import Enum
from typing import Callable

from mlserve.spec import BreakerSpec


class BreakerState(Enum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """Owns one version's failure history and its state."""

    def __init__(self, spec: BreakerSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.num_consecutive_failures = 0
        self._window: deque[bool] = deque(maxlen=spec.window)
        self._num_window_failures = 0
        """False entries in `_window`, kept as it moves (the rate is judged on every request)."""
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.num_opened = 0

    def can_pass(self) -> bool:
        """Whether a request may go to this version now; passing in half-open takes the probe slot."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self._clock() - self._opened_at >= self.spec.open_s:
            self.state = BreakerState.HALF_OPEN
            self._probe_in_flight = False
        if self.state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def record(self, ok: bool) -> None:
        """The outcome of a request this version answered (or failed to)."""
        if self.state is BreakerState.HALF_OPEN:
            self._close() if ok else self._open()
            return
        if self.state is BreakerState.OPEN:
            return
        window = self._window
        if len(window) == window.maxlen and not window[0]:
            self._num_window_failures -= 1  # the oldest entry, a failure, leaves the window
        window.append(ok)
        if not ok:
            self._num_window_failures += 1
        self.num_consecutive_failures = 0 if ok else self.num_consecutive_failures + 1
        if self.num_consecutive_failures >= self.spec.consecutive_failures or self._rate_tripped():
            self._open()

    def release(self) -> None:
        """A request that passed ended without saying anything about this version (bad input)."""
        self._probe_in_flight = False

    @property
    def error_rate(self) -> float:
        return self._num_window_failures / len(self._window) if self._window else 0.0

    def _rate_tripped(self) -> bool:
        return len(self._window) == self._window.maxlen and self.error_rate >= self.spec.error_rate

    def _open(self) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._probe_in_flight = False
        self.num_opened += 1

    def _close(self) -> None:
        self.state = BreakerState.CLOSED
        self.num_consecutive_failures = 0
        self._window.clear()
        self._num_window_failures = 0
        self._probe_in_flight = False

    def to_dict(self) -> dict:
        return {
            "state": self.state.name.lower(),
            "consecutive_failures": self.num_consecutive_failures,
            "error_rate": self.error_rate,
            "times_opened": self.num_opened,
        }
