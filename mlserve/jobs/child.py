"""An in-server job run whole in a child process at the lowest CPU priority (`[batching]
background_process = true`).

Why a process: a job in the server shares the interpreter's lock and the event loop with live
requests: its rows in the live batches make each live batch longer (live p50 +1.7 ms at half
capacity on the MLP example), and on a thread of its own the lock it holds stalls the loop (live p99
2.2-2.7x; docs/batch.md). A child process shares nothing with the server but the cores. It keeps off
the first of the server's CPUs, so a live thread that wakes always finds a CPU the job is not on,
and it runs at SCHED_IDLE (lifeline.lowest_cpu_priority): the kernel gives it the CPU time no thread
of normal priority wants and takes a core back from it when a live thread wakes, yet still gives it
a small weight of a busy core, so a job under full live load moves slowly but never stops.

The child opens the version again through `open_version`, the one way to open a version (backend,
the trust decision the server made for it, warm-up), on the CPU as if alone, and runs the job as
`mlserve batch` runs a file: reading, the engine and writing overlap, and every chunk commits with
its checkpoint (jobs/runner.py). The parent, `ProcessRun`, has the same surface as a `BatchRun` for
the job manager (prepare, run, close, checkpoint, progress): it follows the child's report on the
child's stdout, one JSON line per event:

    {"prepared": {"rows_total": N, "rows_done": D, "rows_failed": F}}   after the run is prepared
    {"progress": {"rows_done": D, "rows_failed": F}}                    after each chunk's commit
    {"done": {...}}                                                     the output is complete
    {"error": {"type": "InvalidInput", "message": "..."}}               the run failed

Stopping the child (a cancel, the server stopping) kills it: every commit is atomic, so a resume
goes on from the last checkpoint, as after a crash. A child whose server is gone kills itself
(lifeline.die_with_parent), so it never writes beside a restarted server. Jobs whose files are on
S3 run in the server (their commits are mirrored to S3 from there).

    python -m mlserve.jobs.child SERVER_PID     (started by ProcessRun only)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import mlserve
from mlserve import errors
from mlserve.errors import InferenceFailed, MlserveError
from mlserve.jobs.offline import engine_calls
from mlserve.jobs.progress import Progress
from mlserve.lifeline import die_with_parent, lowest_cpu_priority
from mlserve.jobs.runner import BatchRun, JobPlan, RunTimes
from mlserve.registry.opening import Alone, BatchedRuntime, VersionFiles, open_version

log = logging.getLogger("mlserve.jobs")

MAX_LINE_BYTES = 64 * 1024
"""The longest report line the parent reads (an error's message is cut to fit)."""


@dataclass(frozen=True, slots=True)
class ChildJob:
    """What the parent hands the child on its stdin."""

    files: VersionFiles
    plan: JobPlan
    overwrite: bool


@dataclass(slots=True)
class RowsSeen:
    """The rows of a run in a child, as its last report gave them (what the job's view shows)."""

    rows_total: int | None = None
    rows_done: int = 0
    rows_failed: int = 0


class ProcessRun:
    """The parent's side of one job in a child process: `prepare()` (blocking) starts the child and
    waits until it has opened the version and prepared the run, `await run()` follows it to the end,
    `close()` stops it if it still runs."""

    def __init__(self, files: VersionFiles, plan: JobPlan) -> None:
        self.plan = plan
        self._files = files
        self.checkpoint: RowsSeen | None = None
        self.progress = Progress(None)
        self._proc: subprocess.Popen | None = None

    def prepare(self, overwrite: bool = False) -> RowsSeen:
        proc = subprocess.Popen([sys.executable, "-m", "mlserve.jobs.child", str(os.getpid())], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, close_fds=True, env=_child_env())
        self._proc = proc
        assert proc.stdin is not None
        try:
            proc.stdin.write(pickle.dumps(ChildJob(self._files, self.plan, overwrite),
                                          protocol=pickle.HIGHEST_PROTOCOL))
            proc.stdin.close()
        except OSError:
            pass  # it died at once: the next read says how
        prepared = self._next()["prepared"]
        self.checkpoint = RowsSeen(prepared["rows_total"], prepared["rows_done"], prepared["rows_failed"])
        self.progress = Progress(self.checkpoint.rows_total)
        self.progress.start(self.checkpoint.rows_done, self.checkpoint.rows_failed)
        return self.checkpoint

    async def run(self) -> RowsSeen:
        assert self.checkpoint is not None, "run before prepare"
        while True:
            message = await asyncio.to_thread(self._next)
            seen = message.get("progress") or message.get("done")
            if seen is None:
                raise InferenceFailed(f"the process of the job on {self._files.label} sent {sorted(message)}")
            self.checkpoint.rows_done, self.checkpoint.rows_failed = seen["rows_done"], seen["rows_failed"]
            self.progress.update(self.checkpoint.rows_done, self.checkpoint.rows_failed)
            if "done" in message:
                assert self._proc is not None
                await asyncio.to_thread(self._proc.wait)
                return self.checkpoint

    def _next(self) -> dict[str, Any]:
        """The child's next report (blocking); its error raised; its end without one an error."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        line = proc.stdout.readline(MAX_LINE_BYTES)
        if not line.endswith(b"\n"):
            proc.kill()
            code = proc.wait()
            raise InferenceFailed(f"the process of the job on {self._files.label} ended (exit code {code}) "
                                  "before the job did")
        message = json.loads(line)
        if "error" in message:
            raise _raised(message["error"])
        return message

    def close(self) -> None:
        """Kill the child if it still runs (its last commit stands; a resume goes on from it)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _child_env() -> dict[str, str]:
    """The server's environment, with the folder this mlserve was imported from first on the path:
    the child runs the same code whatever its working folder."""
    source = str(Path(mlserve.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": source + (os.pathsep + path if path else "")}


def _raised(error: dict[str, str]) -> Exception:
    """The child's error as the parent raises it: mlserve's own error types by name, others named."""
    kind = getattr(errors, str(error.get("type")), None)
    message = str(error.get("message"))
    if isinstance(kind, type) and issubclass(kind, MlserveError):
        return kind(message)
    return InferenceFailed(f"{error.get('type')}: {message}")


def leave_a_cpu_to_live_work() -> set[int] | None:
    """Keep the calling process (its threads started later inherit it) off the first of the CPUs it
    may use, where it may use two or more (Linux): a live thread that wakes then always finds a CPU
    the job is not on. The CPUs now allowed, or None where unchanged."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        return None
    rest = allowed - {min(allowed)}
    os.sched_setaffinity(0, rest)
    return rest


class _Reporter:
    """The child's report lines, from the run's loop and its commit thread alike."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def send(self, kind: str, **fields: Any) -> None:
        line = json.dumps({kind: fields})
        if len(line) >= MAX_LINE_BYTES:
            line = json.dumps({kind: {**fields, "message": str(fields.get("message", ""))[:MAX_LINE_BYTES // 2]}})
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    def rows(self, kind: str, run: BatchRun) -> None:
        cp = run.checkpoint
        assert cp is not None
        self.send(kind, rows_total=cp.rows_total, rows_done=cp.rows_done, rows_failed=cp.rows_failed)


async def _run(job: ChildJob, report: _Reporter) -> None:
    runtime = await open_version(job.files, Alone("cpu"))
    try:
        if not isinstance(runtime, BatchedRuntime):
            raise InferenceFailed(f"{job.files.label} is not a tensor model")
        calls = engine_calls(runtime, RunTimes())
        run = BatchRun(job.plan, calls.infer, after_commit=lambda: report.rows("progress", run),
                       infer_batches=calls.infer_batches)
        try:
            await asyncio.to_thread(run.prepare, job.overwrite)
            report.rows("prepared", run)
            await run.run()
            report.rows("done", run)
        finally:
            run.close()
            calls.executor.shutdown(wait=True)
    finally:
        runtime.close()


def main(parent_pid: int) -> int:
    die_with_parent(parent_pid)  # before anything is written: a child of a killed server writes nothing
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = os.fdopen(os.dup(1), "w")  # the report; anything a library prints goes to stderr instead
    os.dup2(2, 1)
    report = _Reporter(out)
    try:
        leave_a_cpu_to_live_work()
        lowest_cpu_priority()  # before the engine starts a thread: they all inherit it
        job: ChildJob = pickle.load(sys.stdin.buffer)
        asyncio.run(_run(job, report))
    except Exception as exc:
        report.send("error", type=type(exc).__name__, message=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
