"""Settings that belong to the whole process, set once from `[server]` and never from a model.

torch keeps one intra-op thread pool per process, and Python one thread switch interval: a model
that set either would change every other model's (the last one loaded would win). `apply()` is
called once, at start, by the server and by the `mlserve batch` and `mlserve optimize` commands;
the torch backends read `current().torch_threads` when they load (torch is imported only there).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProcessSettings:
    torch_threads: int = 1
    """torch's intra-op threads for every torch model (0 = torch's own default, one per core)."""
    switch_interval_us: int = 500
    """Python's thread switch interval: a batch worker waking with a finished batch waits at most
    this long for the event loop to hand over (Python's own default is 5,000)."""


_current = ProcessSettings()


def apply(settings: ProcessSettings) -> None:
    global _current
    _current = settings
    sys.setswitchinterval(settings.switch_interval_us / 1e6)


def current() -> ProcessSettings:
    return _current
