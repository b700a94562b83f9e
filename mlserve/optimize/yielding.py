"""Optimize runs yield to live load: the server stops a run's child while its models serve, and
continues it once they have been quiet for a while.

Idle priority alone is not enough. A child at SCHED_IDLE still runs whenever a core is free for a
moment, which at half of capacity is much of the time between requests. Measured on two shared cores
(benchmarks/optimize_live.py): with a run in progress at idle priority live p99 was 1.7-3.3x that
without and p50 rose by 1.5-3 ms, while the server's own CPU seconds per request stayed the same: the
server did no more work, it waited more (for a core the child held at a wakeup, for caches the child
had filled). So the run waits:

- Every TICK_S, while a job runs, the loop asks the data plane whether any version has a request
  queued or running (`DataPlane.is_serving`, a walk over the versions' counters). The share of those
  samples that found work, decayed over WINDOW_S, is the load signal.
- At BUSY_SHARE or above, each running child is stopped: SIGSTOP to its process group. A job that is
  publishing is left to finish (a version half-written helps nobody).
- Below BUSY_SHARE for QUIET_S, the children continue: the job's stopped seconds are written to its
  folder first (optimize/pause.py: the child's budgets and timings leave them out), then SIGCONT.

A server that is never quiet therefore never finishes a run; the run says so (`waiting: live load`
in its view and on /metrics) rather than slowing serving. A trickle below BUSY_SHARE (health checks,
a few requests a second) lets it run. The time limit of a job counts only the time it was not stopped.

Not thread-safe: the event loop owns it.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mlserve.optimize.pause import write_paused_s

TICK_S = 0.02
WINDOW_S = 1.0
BUSY_SHARE = 0.05
"""Share of samples with a request in flight at or above which runs stop."""
QUIET_S = 1.0
"""How long the share must stay below BUSY_SHARE before stopped runs continue."""
WAITING_FOR_LIVE = "live load"


@dataclass(slots=True)
class Pause:
    """One job's pauses: since when it is stopped (None while it runs), and the seconds of those that ended."""

    since: float | None = None
    ended_s: float = 0.0

    def stopped_s(self, now: float) -> float:
        """Every second the job has spent stopped, the current pause included."""
        return self.ended_s + (now - self.since if self.since is not None else 0.0)

    @property
    def waiting(self) -> str | None:
        """What the job waits for, or None while it runs."""
        return WAITING_FOR_LIVE if self.since is not None else None


class LoadSignal:
    """The decayed share of samples that found the server serving, with a quiet period before it clears."""

    def __init__(self, window_s: float = WINDOW_S, busy_share: float = BUSY_SHARE, quiet_s: float = QUIET_S) -> None:
        self._window_s, self._busy_share, self._quiet_s = window_s, busy_share, quiet_s
        self.share = 0.0
        self.is_loaded = False
        self._at: float | None = None
        self._quiet_since: float | None = None

    def sample(self, is_serving: bool, now: float) -> bool:
        """Take one sample; whether runs should be stopped now."""
        value = 1.0 if is_serving else 0.0
        if self._at is None:
            self.share = value
        else:
            keep = math.exp(-max(0.0, now - self._at) / self._window_s)
            self.share = self.share * keep + value * (1.0 - keep)
        self._at = now
        if self.share >= self._busy_share:
            self.is_loaded, self._quiet_since = True, None
        elif self.is_loaded:
            self._quiet_since = now if self._quiet_since is None else self._quiet_since
            if now - self._quiet_since >= self._quiet_s:
                self.is_loaded, self._quiet_since = False, None
        return self.is_loaded


@dataclass(slots=True)
class _Member:
    pid: int
    folder: Path
    pause: Pause
    can_pause: Callable[[], bool]


class LiveYield:
    """Samples the server's load while optimize jobs run, and stops or continues their children."""

    def __init__(self, is_serving: Callable[[], bool], clock: Callable[[], float] = time.monotonic) -> None:
        self._is_serving = is_serving
        self._clock = clock
        self._members: dict[str, _Member] = {}
        self._signal = LoadSignal()
        self._task: asyncio.Task | None = None

    def add(self, key: str, pid: int, folder: Path, pause: Pause, can_pause: Callable[[], bool]) -> None:
        """Yield this child (the leader of its process group) to live load from now on."""
        self._members[key] = _Member(pid, folder, pause, can_pause)
        if self._task is None or self._task.done():
            self._signal = LoadSignal()  # a fresh look at the load: the last job may be long gone
            self._task = asyncio.get_running_loop().create_task(self._run())

    def release(self, key: str) -> None:
        """Continue the child if it is stopped, and leave it alone from now on (it is being stopped or is done)."""
        member = self._members.pop(key, None)
        if member is not None and member.pause.since is not None:
            self._continue(member, self._clock())

    async def close(self) -> None:
        for key in list(self._members):
            self.release(key)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while self._members:
            self.tick()
            await asyncio.sleep(TICK_S)

    def tick(self) -> None:
        now = self._clock()
        is_loaded = self._signal.sample(self._is_serving(), now)
        for member in list(self._members.values()):
            if is_loaded and member.pause.since is None and member.can_pause():
                member.pause.since = now
                _signal_group(member.pid, signal.SIGSTOP)
            elif not is_loaded and member.pause.since is not None:
                self._continue(member, now)

    def _continue(self, member: _Member, now: float) -> None:
        member.pause.ended_s = member.pause.stopped_s(now)
        member.pause.since = None
        try:
            write_paused_s(member.folder, member.pause.ended_s)
        except OSError:
            pass  # the folder is gone with the job; continue it all the same
        _signal_group(member.pid, signal.SIGCONT)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
