"""The child process an in-server optimize job runs in: `python -m mlserve.optimize.worker JOB_DIR
[SERVER_PID]` (with the server's pid it dies with the server: mlserve/lifeline.py).

It lowers its own priority first (SCHED_IDLE, nice 19), so serving keeps the CPU it needs, then runs the job, appending
each progress event to JOB_DIR/progress.jsonl and writing JOB_DIR/report.json (or error.json).
SIGTERM (the job's DELETE) ends it through the normal exit path, so its scratch folder is removed.

While the server's models serve, the server keeps the worker stopped (SIGSTOP, optimize/yielding.py);
its clock (optimize/pause.py) leaves that time out of budgets and timings. A stopped process runs no
lifeline thread, so the kernel's parent-death signal (SIGKILL, which ends a stopped process too) is
asked for as well.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from mlserve.lifeline import lowest_cpu_priority

_PR_SET_PDEATHSIG = 1


def _die_with_parent_stopped() -> None:
    """SIGKILL from the kernel when the server's process ends, stopped or not (Linux only; the
    lifeline covers the rest). The server's loop thread starts the worker and lives as long as it."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _stop(signum, frame) -> None:
    raise SystemExit(143)


def main(job_dir: Path, parent_pid: int | None = None) -> int:
    if parent_pid is not None:
        from mlserve.lifeline import die_with_parent

        _die_with_parent_stopped()
        die_with_parent(parent_pid)  # nothing is published once the server is gone (checked after the prctl)
    lowest_cpu_priority()  # own latency figures then include the server's load, as on any shared machine
    signal.signal(signal.SIGTERM, _stop)
    from mlserve.optimize.pause import CLOCK

    if parent_pid is not None:
        CLOCK.install(job_dir)  # from here on the server may stop this process; the heavy imports follow
    from mlserve.errors import MlserveError
    from mlserve.optimize.pipeline import run
    from mlserve.optimize.request import from_json

    request = from_json(json.loads((job_dir / "request.json").read_text()))
    with open(job_dir / "progress.jsonl", "a", buffering=1) as progress:
        def emit(event: dict) -> None:
            if event["event"] == "publishing":
                # Past this point a version appears in the repository: finish rather than stop
                # halfway (the parent no longer cancels once it has read this line).
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            progress.write(json.dumps(event) + "\n")

        try:
            report = run(request, emit, work_root=job_dir)
        except MlserveError as exc:
            (job_dir / "error.json").write_text(json.dumps({"error": str(exc)}))
            return 1
    (job_dir / "report.tmp").write_text(json.dumps(report.to_dict()))
    os.rename(job_dir / "report.tmp", job_dir / "report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None))
