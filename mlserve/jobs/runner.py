"""One batch run: read chunks, run them through the model a batch at a time, commit each chunk
with its checkpoint, and turn the committed parts into the output at the end.

The same run serves the offline command (the model's engine on an executor thread) and in-server
jobs (the version's own batcher at the lowest priority): only the `infer` callable differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import numpy as np

from mlserve.errors import InvalidInput, MlserveError, ModelNotFound, ModelNotReady
from mlserve.jobs.checkpoint import (
    DONE, Checkpoint, checkpoint_path, load_checkpoint, mismatch, save_checkpoint,
)
from mlserve.jobs.formats import FORMATS, format_of, open_reader, open_writer
from mlserve.jobs.jsonl import ErrorsFile
from mlserve.jobs.progress import Progress
from mlserve.jobs.rows import Chunk, Reader, RowFailure, Writer, check_output_names
from mlserve.spec import ModelInfo, TensorSpec

Tensors = dict[str, np.ndarray]
InferFn = Callable[[Tensors, int], Awaitable[Tensors]]
BatchesFn = Callable[[list[Tensors]], Awaitable[list["Tensors | Exception"]]]
"""Several batches in one call, answered in order, each with its outputs or the exception it raised."""

# Errors that say the model cannot serve at all: the run stops (and resumes later) instead of
# recording every remaining row as failed.
_FATAL = (ModelNotFound, ModelNotReady)
CHUNK_ROWS = 4096
_FIRST_CHUNK_PART = 16
"""A run's first chunk is this part of the others (at least one batch)."""
_COMMITS_IN_FLIGHT = 2
"""Chunks whose commit (write, fsync, checkpoint) may still run while the engine runs the next one:
an fsync slower than a chunk's compute then stalls the engine only once two are behind."""


@dataclass(frozen=True, slots=True)
class JobPlan:
    """What one batch run reads, runs and writes."""

    model: str
    version: int
    info: ModelInfo
    input: Path
    output: Path
    errors: Path | None = None
    """Failed rows, as JSON lines; default `<output>.errors.jsonl`."""
    chunk_rows: int = 0
    """Rows read and committed at a time (a multiple of the batch size); 0 = about 4096."""

    @property
    def batch_rows(self) -> int:
        return self.info.max_batch_size

    @property
    def errors_path(self) -> Path:
        return self.errors or self.output.with_name(self.output.name + ".errors.jsonl")

    @property
    def rows_per_chunk(self) -> int:
        wanted = self.chunk_rows or CHUNK_ROWS
        return max(1, -(-wanted // self.batch_rows)) * self.batch_rows


@dataclass(slots=True)
class RunTimes:
    """Where one run's time went, summed over its batches (seconds): what `mlserve batch` reports per
    batch. Reading (with decoding) and writing (with encoding) run on their own threads beside the
    engine; `engine_wait_s` is how long the run loop waited for answers with none ready."""

    batches: int = 0
    read_s: float = 0.0
    engine_s: float = 0.0
    """Inside the model's infer call, when the infer callable records it (the offline engine does)."""
    engine_wait_s: float = 0.0
    commit_wait_s: float = 0.0
    """How long the run loop waited for earlier chunks' commits before handing the engine more rows."""
    write_s: float = 0.0
    sync_s: float = 0.0
    """fsync of the output and errors files."""
    checkpoint_s: float = 0.0
    """Writing and syncing the checkpoint."""
    prepare_s: float = 0.0
    """Once per run, before the first row: opening the files (the first checkpoint is saved beside
    the engine's first chunk)."""
    finish_s: float = 0.0
    """Once per run, after the last row: the output file, its sync and the done checkpoint."""

    def per_batch_us(self) -> dict[str, float]:
        parts = {"read": self.read_s, "engine": self.engine_s, "write": self.write_s, "sync": self.sync_s,
                 "checkpoint": self.checkpoint_s, "commit wait": self.commit_wait_s}
        return {name: 1e6 * seconds / max(1, self.batches) for name, seconds in parts.items()}


def check_plan(plan: JobPlan, suffixes: tuple[str, ...] = FORMATS) -> None:
    """Refuse what no run could do, before anything is touched."""
    if plan.info.max_batch_size <= 0:
        raise InvalidInput(f"model {plan.model!r} has max_batch_size 0 (no batch dimension): batch runs need one")
    format_of(plan.input, suffixes)
    format_of(plan.output, suffixes)
    if not plan.input.is_file():
        raise InvalidInput(f"input {plan.input} is not a file")
    check_output_names([s.name for s in plan.info.outputs])
    if plan.input.resolve() in (plan.output.resolve(), plan.errors_path.resolve()):
        raise InvalidInput("the output and errors files must differ from the input")
    if plan.errors_path.is_dir():
        raise InvalidInput(f"errors {plan.errors_path} is a folder")
    if plan.errors_path.resolve() in {p.resolve() for p in output_files(plan.output)}:
        raise InvalidInput(f"errors {plan.errors_path} is a file the output {plan.output.name} writes itself")


def output_files(output: Path) -> tuple[Path, ...]:
    """Every file a run writes for its output: the output, its partial and its checkpoint."""
    checkpoint = checkpoint_path(output)
    return (output, output.with_name(output.name + ".partial"), checkpoint,
            checkpoint.with_name(checkpoint.name + ".tmp"))


def _fresh_checkpoint(plan: JobPlan) -> Checkpoint:
    stat = os.stat(plan.input)
    return Checkpoint(plan.model, plan.version, str(plan.input.resolve()), str(plan.output.resolve()),
                      str(plan.errors_path.resolve()), stat.st_size, stat.st_mtime_ns)


async def _to_thread_to_the_end(fn, *args) -> None:
    """Run `fn` on a thread; a cancel waits for it to finish, so no file is closed under a commit."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        raise


@dataclass(frozen=True, slots=True)
class RowFormats:
    """How a run opens its input and output; by file suffix unless a mode (OpenAI batch) says otherwise."""

    open_reader: Callable[[Path, tuple[TensorSpec, ...]], Reader] = open_reader
    open_writer: Callable[[Path, tuple[TensorSpec, ...]], Writer] = open_writer
    suffixes: tuple[str, ...] = FORMATS


def _choose(plan: JobPlan, overwrite: bool) -> tuple[Checkpoint, bool]:
    """The checkpoint to go on from and whether it is a resume. Refuses to touch another run's
    checkpoint or an output no checkpoint explains, unless told to start over."""
    path = checkpoint_path(plan.output)
    fresh, stored = _fresh_checkpoint(plan), load_checkpoint(path)
    if overwrite:
        return fresh, False
    if stored is None:
        for what, path in (("output", plan.output), ("errors", plan.errors_path)):
            if path.exists() or path.is_symlink():
                raise InvalidInput(f"{what} {path} exists; start over with overwrite")
        return fresh, False
    differs = mismatch(stored, fresh)
    if differs:
        raise InvalidInput(f"{path} records another run ({differs}); start over with overwrite")
    if stored.is_done and not plan.output.exists():
        raise InvalidInput(f"{path} records a finished run but {plan.output} is gone; start over with overwrite")
    return stored, True


def preflight(plan: JobPlan, overwrite: bool = False, formats: RowFormats | None = None) -> None:
    """The refusals prepare() would make, checked before a job is accepted (nothing is written)."""
    check_plan(plan, (formats or RowFormats()).suffixes)
    _choose(plan, overwrite)


class BatchRun:
    """Owns one run's reader, writers and checkpoint; `prepare()` then `await run()`."""

    def __init__(self, plan: JobPlan, infer: InferFn, formats: RowFormats | None = None,
                 after_commit: Callable[[], None] | None = None, depth: int = 1,
                 times: RunTimes | None = None, infer_batches: BatchesFn | None = None) -> None:
        self._formats = formats or RowFormats()
        self._depth = max(1, depth)
        """Batches handed to `infer` before the first of them is answered: 2 or more keep an engine
        on its own thread busy while the loop takes the last answer."""
        self._infer_batches = infer_batches
        """When given, a chunk's batches go to the engine in one call (the offline command: its engine
        thread runs them back to back and the event loop wakes once a chunk, not once a batch);
        `infer` still reruns the halves of a batch that failed."""
        self.times = times or RunTimes()
        self._after_commit = after_commit
        """Called on the commit thread once a checkpoint is saved (the S3 mirror of a job's files)."""
        check_plan(plan, self._formats.suffixes)
        self.plan = plan
        self._infer = infer
        self._path = checkpoint_path(plan.output)
        self.checkpoint: Checkpoint | None = None
        self.progress = Progress(None)
        self._reader = self._writer = self._errors = None
        self._is_saved = True
        """Whether the checkpoint file records this run yet (a fresh run's first one is saved by run())."""

    def prepare(self, overwrite: bool = False) -> Checkpoint:
        """Resume from the checkpoint when it records this same run; start afresh otherwise (only
        with `overwrite` when an output or another run's checkpoint is there). Blocking file work."""
        started = time.perf_counter()
        try:
            return self._prepare(overwrite)
        finally:
            self.times.prepare_s += time.perf_counter() - started

    def _prepare(self, overwrite: bool) -> Checkpoint:
        checkpoint, resumed = _choose(self.plan, overwrite)
        self._reader = self._formats.open_reader(self.plan.input, self.plan.info.inputs)
        checkpoint.rows_total = self._reader.num_rows
        self.checkpoint = checkpoint
        self.progress = Progress(checkpoint.rows_total)
        self.progress.start(checkpoint.rows_done, checkpoint.rows_failed)
        if checkpoint.is_done:
            return checkpoint
        self._writer = self._formats.open_writer(self.plan.output, self.plan.info.outputs)
        self._errors = ErrorsFile(self.plan.errors_path)
        self._writer.restore(checkpoint.writer if resumed else None)
        if resumed:
            self._errors.restore(checkpoint.errors_state)
        else:  # created exclusively: a file that appeared since the check is never truncated
            self._errors.create(replace=overwrite)
        self._reader.seek(checkpoint.reader)
        self._is_saved = resumed
        return checkpoint

    async def run(self) -> Checkpoint:
        """Every remaining chunk, then the output file. Reading the next chunk and committing the last
        ones overlap the model: the engine waits on the files only when two commits are behind.
        Commits run one after another in chunk order; the last chunk's goes straight on to the
        output and the done checkpoint (see _commit)."""
        assert self.checkpoint is not None, "run before prepare"
        if self.checkpoint.is_done:
            return self.checkpoint
        rows = self.plan.rows_per_chunk
        # a short first chunk: the engine starts after reading a few batches, not a whole chunk
        first_rows = max(1, rows // _FIRST_CHUNK_PART // self.plan.batch_rows) * self.plan.batch_rows
        pending = asyncio.ensure_future(asyncio.to_thread(self._read, first_rows))
        commits: deque[asyncio.Future] = deque()
        if not self._is_saved:  # before any chunk's commit (chained), beside the first chunk's compute
            commits.append(asyncio.ensure_future(_to_thread_to_the_end(save_checkpoint, self._path, self.checkpoint)))
            self._is_saved = True
        try:
            chunk = await pending
            while chunk is not None:
                pending = asyncio.ensure_future(asyncio.to_thread(self._read, rows))
                answered, outputs, failures = await self._infer_chunk(chunk)
                following = await pending
                chunk.inputs = {}  # answered: its commit needs only the rows and the reader's position
                commits.append(asyncio.ensure_future(self._commit_after(
                    commits[-1] if commits else None, chunk, answered, outputs, failures, following is None)))
                waited = time.perf_counter()
                while commits and (commits[0].done() or len(commits) > _COMMITS_IN_FLIGHT):
                    await commits.popleft()
                self.times.commit_wait_s += time.perf_counter() - waited
                chunk = following
            while commits:
                await commits.popleft()
            await _to_thread_to_the_end(self._finish)
        finally:
            with contextlib.suppress(BaseException):
                # no reader or writer thread left behind a closed file
                await asyncio.wait([pending, *commits])
        return self.checkpoint

    async def _commit_after(self, previous: asyncio.Future | None, *args) -> None:
        """One chunk's commit once the chunk before it is committed (a failed one stops this one)."""
        if previous is not None:
            await asyncio.wait([previous])
            if previous.cancelled() or previous.exception() is not None:
                return
        await _to_thread_to_the_end(self._commit, *args)

    def _read(self, max_rows: int) -> Chunk | None:
        started = time.perf_counter()
        try:
            return self._reader.read(max_rows)
        finally:
            self.times.read_s += time.perf_counter() - started

    async def _infer_chunk(self, chunk: Chunk) -> tuple[np.ndarray, Tensors, list[RowFailure]]:
        """The chunk's batches in order, up to `depth` of them in flight (or all in one call to
        `infer_batches`); answers are taken in order."""
        parts: list[tuple[np.ndarray, Tensors]] = []
        failures = list(chunk.failures)
        step = self.plan.batch_rows
        if self._infer_batches is not None:
            spans = [slice(start, start + step) for start in range(0, len(chunk.rows), step)]
            batches = [({n: a[span] for n, a in chunk.inputs.items()}, chunk.rows[span]) for span in spans]
            self.times.batches += len(batches)
            waited = time.perf_counter()
            answers = await self._infer_batches([inputs for inputs, _ in batches])
            self.times.engine_wait_s += time.perf_counter() - waited
            for (inputs, rows), answer in zip(batches, answers):
                await self._take(inputs, rows, answer, parts, failures)
            return self._joined(parts, failures)
        window: deque[tuple[Tensors, np.ndarray, asyncio.Future]] = deque()
        try:
            for start in range(0, len(chunk.rows), step):
                span = slice(start, start + step)
                inputs, rows = {n: a[span] for n, a in chunk.inputs.items()}, chunk.rows[span]
                window.append((inputs, rows, asyncio.ensure_future(self._infer(inputs, len(rows)))))
                self.times.batches += 1
                if len(window) >= self._depth:
                    await self._settle(*window.popleft(), parts, failures)
            while window:
                await self._settle(*window.popleft(), parts, failures)
        finally:
            for *_, answer in window:  # a fatal error or a cancel: drop the rest, retrieve what ended
                if answer.done() and not answer.cancelled():
                    answer.exception()
                answer.cancel()
        return self._joined(parts, failures)

    @staticmethod
    def _joined(parts: list[tuple[np.ndarray, Tensors]], failures: list[RowFailure]
                ) -> tuple[np.ndarray, Tensors, list[RowFailure]]:
        failures.sort(key=lambda f: f.row)
        if not parts:
            return np.empty(0, np.int64), {}, failures
        rows = np.concatenate([p[0] for p in parts])
        outputs = {n: np.concatenate([p[1][n] for p in parts]) for n in parts[0][1]}
        return rows, outputs, failures

    async def _settle(self, inputs: Tensors, rows: np.ndarray, answer: asyncio.Future, parts: list,
                      failures: list[RowFailure]) -> None:
        """One batch's answer; when it failed, the batch again in halves (see _infer_span)."""
        waited = time.perf_counter()
        try:
            outputs = await answer
            self.times.engine_wait_s += time.perf_counter() - waited
            parts.append((rows, self._checked(outputs, len(rows))))
        except _FATAL:
            raise
        except Exception as exc:
            await self._split(inputs, rows, exc, parts, failures)

    async def _take(self, inputs: Tensors, rows: np.ndarray, answer: Tensors | Exception, parts: list,
                    failures: list[RowFailure]) -> None:
        """One batch's answer from `infer_batches`: outputs, or the exception its batch raised."""
        if isinstance(answer, _FATAL):
            raise answer
        try:
            if isinstance(answer, Exception):
                raise answer
            parts.append((rows, self._checked(answer, len(rows))))
        except _FATAL:
            raise
        except Exception as exc:
            await self._split(inputs, rows, exc, parts, failures)

    def _checked(self, outputs: Tensors, num_rows: int) -> Tensors:
        names = [s.name for s in self.plan.info.outputs]
        bad = [n for n in names if n not in outputs or outputs[n].shape[:1] != (num_rows,)]
        if bad:
            raise MlserveError(f"output(s) {bad} missing or without one row per input row")
        return {n: outputs[n] for n in names}

    async def _infer_span(self, inputs: Tensors, rows: np.ndarray, parts: list, failures: list[RowFailure]) -> None:
        """One batch; when it fails, halves of it, down to the single rows that fail on their own."""
        try:
            parts.append((rows, self._checked(await self._infer(inputs, len(rows)), len(rows))))
        except _FATAL:
            raise
        except Exception as exc:
            await self._split(inputs, rows, exc, parts, failures)

    async def _split(self, inputs: Tensors, rows: np.ndarray, exc: Exception, parts: list,
                     failures: list[RowFailure]) -> None:
        if len(rows) == 1:
            failures.append(RowFailure(int(rows[0]), f"{type(exc).__name__}: {exc}"))
            return
        half = len(rows) // 2
        for span in (slice(0, half), slice(half, None)):
            await self._infer_span({n: a[span] for n, a in inputs.items()}, rows[span], parts, failures)

    def _commit(self, chunk: Chunk, rows: np.ndarray, outputs: Tensors, failures: list[RowFailure],
                is_last: bool = False) -> None:
        """Output and errors synced first, checkpoint replaced last: the order exactly-once rests on.
        The last chunk saves no checkpoint of its own: _finish saves the done one right after. A crash
        in between leaves files synced past the checkpoint, which a resume cuts back, as after a crash
        between any chunk's sync and its checkpoint."""
        cp, times = self.checkpoint, self.times
        started = time.perf_counter()
        if len(rows):
            self._writer.write(rows, outputs)
        self._errors.write(failures)
        written = time.perf_counter()
        cp.writer = self._writer.commit()
        cp.errors_state = self._errors.commit()
        synced = time.perf_counter()
        cp.reader = chunk.state
        cp.rows_done += chunk.num_rows
        cp.rows_ok += len(rows)
        cp.rows_failed += len(failures)
        if not is_last:
            save_checkpoint(self._path, cp)
        times.write_s += written - started
        times.sync_s += synced - written
        times.checkpoint_s += time.perf_counter() - synced
        if self._after_commit is not None and not is_last:
            self._after_commit()
        self.progress.update(cp.rows_done, cp.rows_failed)

    def _finish(self) -> None:
        started = time.perf_counter()
        self._writer.finish()
        self._errors.close()
        self.checkpoint.state = DONE
        save_checkpoint(self._path, self.checkpoint)
        self._writer.cleanup()
        self.times.finish_s += time.perf_counter() - started

    def close(self) -> None:
        for part in (self._reader, self._writer, self._errors):
            if part is not None:
                part.close()
