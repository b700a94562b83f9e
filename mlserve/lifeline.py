"""Child processes that never outlive the server.

The server's children (the optimize worker, a batch job's child, the decode pool's process) call
`die_with_parent` first thing. A daemon thread in the child watches its parent pid: when the server is gone (killed with
SIGKILL included, so no cleanup of its own runs) the child is re-parented and kills itself at once,
so it cannot publish, write or hold memory after the server. Polling the parent pid works whichever
thread of the server started the child (Linux's PR_SET_PDEATHSIG fires when that *thread* exits,
which would kill a pool child started from a short-lived executor thread), and on every POSIX
system. What a killed child leaves behind is for the start-up sweeps of the next server.
"""

from __future__ import annotations

import os
import signal
import threading
import time

NICENESS = 19
POLL_S = 0.2
"""How often the child looks at its parent; the longest it outlives the server."""


def is_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent(parent_pid: int) -> None:
    """End this process with SIGKILL as soon as `parent_pid` is no longer its parent (with its whole
    process group when it leads one, so what it started goes too)."""
    if os.getppid() != parent_pid:  # the parent died before the child got here
        _end()

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(POLL_S)
        _end()

    threading.Thread(target=watch, name="mlserve-lifeline", daemon=True).start()


def lowest_cpu_priority() -> str:
    """For a child doing background work (an optimize run, a batch job): nice 19, then SCHED_IDLE
    where the OS has it, so it runs only on CPU time serving leaves unused. Threads started after
    the call inherit it. Returns what was set."""
    os.nice(NICENESS - os.nice(0))
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
        except OSError:
            pass  # nice 19 alone
    return f"nice {NICENESS}"


def _end() -> None:
    if os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
