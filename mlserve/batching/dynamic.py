"""Dynamic batching for request/response models: queue, group rows, run off the loop, split back."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from mlserve.batching.background import BackgroundQueue
from mlserve.batching.deadline import DeadlineWatch
from mlserve.batching.guard import GuardedInfer
from mlserve.batching.queue import RequestQueue, Waiting
from mlserve.batching.share import BackgroundShare, short_rows
from mlserve.errors import InferenceFailed, InvalidInput, Overloaded, RequestTimeout
from mlserve.spec import BatchingSpec, SchedulePolicy

Tensors = dict[str, np.ndarray]


class InferFn(Protocol):
    def __call__(self, inputs: Tensors) -> Tensors: ...


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one executed batch looked like; handed to the observer after it ran."""

    num_requests: int
    num_rows: int
    queue_s: tuple[float, ...]
    compute_s: float
    failed: bool
    is_short: bool = False
    """The lone request's short path: the loop waited for the worker itself (batching/guard.py)."""


_DEFAULT_POLICY = SchedulePolicy()
SHORT_WAIT_S = 0.001
"""How long the loop may wait for a lone request's batch itself, blocked (the short path); a model
whose lone rows take longer answers by the usual wake-up of the loop."""
BACKGROUND_DEPTH = 4
"""Background batches handed to the background thread at once: it runs them one after another, so
it has the next ones while the event loop, busy with live requests, is late to form more (at 2 the
MLP example's job ran at 0.39 of its rate alone beside half-capacity live load, at 4 at 0.43, both
measured with benchmarks.batch's earlier, costlier live client)."""
PROBE_EVERY = 8
"""Every this many short-path batches in a row, one lone batch runs with the loop free instead, to
see whether requests arrive while it runs (see `_short_wait_s`)."""


class DynamicBatcher:
    """Owns one version's bounded queue and its worker tasks; each batch runs on a guarded worker thread.

    A batch closes as soon as it is full; when nothing more arrived during the last turn of the event
    loop (the last few for a front that asks for them in SchedulePolicy.quiet_turns, gRPC's) and
    either no other batch is running (an idle server answers a lone request at once) or a preferred
    size is reached; or when the oldest waiting request's delay is up (timed from its
    arrival, not from the end of the last batch). Requests whose tensors differ beyond the batch
    dimension (sentences of different lengths) are never concatenated: a batch runs as one group
    per trailing shape.

    Background work (in-server jobs) waits apart from live requests, in `submit_background`, and
    gets its rows by the rule in batching/share.py: spare rows of live batches, a guaranteed floor,
    and short batches of its own while live traffic is about; or, given a `background` worker
    (`background_thread = true`), full batches on that thread at the lowest OS priority beside the
    live batches, and the floor in live batches.

    A request's deadline is enforced here and only here (batching/deadline.py: one timer for the
    whole queue); past it the request leaves the queue, or, if its batch is already running, is
    answered 504 at once and its rows are dropped when the batch returns.

    A lone request (a batch of one, nothing else queued, no other batch running) takes the short
    path: the loop waits for the worker thread itself, at most SHORT_WAIT_S, so the answer comes back
    without waking the loop through its self-pipe and without a future or a watchdog timer; the hang
    guard still counts from the start and answers 504 past it. While the loop is blocked it reads
    nothing, so a steady stream of requests that reach the loop one per turn (gRPC's: its messages
    come through its own completion queue) would each find the batcher idle and never batch: every
    PROBE_EVERY-th lone batch runs with the loop free, and when requests arrived while it ran the
    short path stays off until a batch runs with none arriving. The first request into an idle
    batcher is also run from its own task (`_run_alone`) rather than a worker task's, after the same
    quiet turns of the loop, so concurrent requests still batch together; it holds one of the
    `instances` slots while it runs.
    """

    def __init__(
        self,
        infer: InferFn,
        spec: BatchingSpec,
        name: str,
        instances: int = 1,
        observer: Callable[[BatchStats], None] | None = None,
        background: GuardedInfer | None = None,
    ) -> None:
        self._guard = infer if isinstance(infer, GuardedInfer) else GuardedInfer(
            infer, name, can_split=spec.max_batch_size > 0
        )
        self._spec = spec
        self._instances = instances
        self._observer = observer
        self._queue = RequestQueue(spec.priority_levels, spec.max_queue_size, spec.priority_aging_us / 1e6)
        self._delay_s = spec.max_queue_delay_us / 1e6
        self._default_level = spec.default_priority_level or spec.priority_levels
        self._arrived: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._slot_freed: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []
        self._deadlines = DeadlineWatch(self._expire)
        self._num_running = 0
        self._recent_rows_per_s = 0.0
        self._lone_compute_s = 0.0
        self._contended = False
        """Requests arrived while the last batch run with the loop free ran: no short path."""
        self._short_streak = 0
        self._turns = 1
        """SchedulePolicy.quiet_turns of the latest request."""
        self._background = BackgroundQueue()
        self.share = BackgroundShare(spec.background_share)
        self._bg = background
        self._bg_running = 0
        self._bg_wake: asyncio.Event | None = None
        self._bg_tasks: set[asyncio.Task] = set()
        self._floor_owed = 0
        """Held rows (share rule 3) that live requests too large to leave them free kept out of batches."""

    @property
    def num_queued(self) -> int:
        return self._queue.num_requests

    @property
    def num_in_flight(self) -> int:
        return self._queue.num_requests + self._num_running

    @property
    def max_batch_size(self) -> int:
        return self._spec.max_batch_size

    @property
    def num_background(self) -> int:
        """Background rows waiting, not yet in a batch (not counted in num_queued or num_in_flight)."""
        return self._background.num_rows

    def start(self) -> None:
        """Create the loop-bound objects and workers; call from inside the running loop."""
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._slot_freed = asyncio.Event()
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._instances)]
        if self._bg is not None:
            self._bg_wake = asyncio.Event()
            self._workers.append(asyncio.create_task(self._background_work()))

    async def submit(self, inputs: Tensors, num_rows: int, policy: SchedulePolicy | None = None) -> Tensors:
        """Queue one request's tensors (all with `num_rows` leading rows when batching) and await its outputs."""
        assert self._arrived is not None and self._idle is not None, "submit before start"
        policy = policy or _DEFAULT_POLICY
        batching = self._spec.max_batch_size > 0
        if batching and num_rows > self._spec.max_batch_size:
            raise InvalidInput(
                f"request has {num_rows} rows, more than this model's max_batch_size {self._spec.max_batch_size}"
            )
        level = self._level(policy.priority)
        if self._queue.is_full():
            raise Overloaded(f"queue is full ({self._spec.max_queue_size} requests waiting)", self._retry_after_s())
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        item = Waiting(inputs, num_rows, level, now, future=loop.create_future())
        item.deadline = policy.deadline
        queue_limit = self._queue_limit(policy, now)
        if queue_limit is not None and (item.deadline is None or queue_limit < item.deadline):
            item.timer = loop.call_at(loop.time() + (queue_limit - now), self._expire, item)
        if item.deadline is not None:
            self._deadlines.watch(item, loop)
        is_alone = self._can_run_alone()
        self._turns = policy.quiet_turns
        self._queue.push(item)
        self._idle.clear()
        if not is_alone:
            self._arrived.set()
        try:
            if is_alone:
                await self._run_alone(item)
            return await item.future
        except asyncio.CancelledError:
            if self._queue.remove(item):  # the client went away: its rows need not run
                self._live_queue_shrank()
            if item.timer is not None:
                item.timer.cancel()
            self._set_idle_if_done()
            raise

    async def submit_background(self, inputs: Tensors, num_rows: int) -> Tensors:
        """Queue rows of background work (a job's, at most max_batch_size of them); they run by the
        share rule, never ahead of live requests beyond its floor."""
        assert self._arrived is not None and self._idle is not None, "submit before start"
        if self._spec.max_batch_size > 0 and num_rows > self._spec.max_batch_size:
            raise InvalidInput(f"background work of {num_rows} rows exceeds max_batch_size {self._spec.max_batch_size}")
        future = asyncio.get_running_loop().create_future()
        handle = self._background.push(inputs, num_rows, time.monotonic(), future)
        self._idle.clear()
        if self._bg_wake is not None:
            self._bg_wake.set()
        else:
            self._arrived.set()
        try:
            return await future
        except asyncio.CancelledError:
            self._background.remove(handle)
            self._set_idle_if_done()
            raise

    def _can_run_alone(self) -> bool:
        """An idle batcher whose model answered lone rows within the short wait lately."""
        return (self._spec.max_batch_size > 0 and not self._queue.num_requests and not self._live_sees_background()
                and not self._num_running and self._lone_compute_s < SHORT_WAIT_S)

    def _live_sees_background(self) -> bool:
        """Background rows wait that live batches must take: any, or with a background thread only
        its floor (share rule 3)."""
        return bool(self._background) and (self._bg is None or self.share.held_rows_due(time.monotonic()))

    async def _run_alone(self, item: Waiting) -> None:
        """The first request into an idle batcher, in its own task: the quiet turns of the loop
        (`_quiet_turns`) let requests already read off sockets join it (then the workers batch them
        all, as without this); if none did, it runs here at once, without waking a worker task and
        being woken back by it."""
        assert self._arrived is not None and self._slot_freed is not None, "submit before start"
        await self._quiet_turns()
        if self._queue.num_requests != 1 or self._live_sees_background() or self._num_running or item.future.done():
            self._arrived.set()
            return
        now = time.monotonic()
        batch = self._account(self._queue.take(self._spec.max_batch_size, now), now)
        self._num_running += 1
        try:
            await self._run(batch)
        finally:
            self._num_running -= 1
            self._slot_freed.set()
            self._set_idle_if_done()
            if self._queue.num_requests or self._live_sees_background():
                self._arrived.set()

    def _level(self, priority: int | None) -> int:
        if priority is None or priority == 0:
            return self._default_level
        if not 1 <= priority <= self._spec.priority_levels:
            raise InvalidInput(f"priority must lie in 1..{self._spec.priority_levels} for this model, got {priority}")
        return priority

    def _queue_limit(self, policy: SchedulePolicy, now: float) -> float | None:
        """When the request must leave the queue: the model's `timeout_us`, or the request's own if shorter."""
        limits = [t for t in (self._spec.timeout_us, policy.timeout_us) if t]
        return now + min(limits) / 1e6 if limits else None

    def _retry_after_s(self) -> float:
        """About how long the queue takes to empty at the recent pace."""
        if self._recent_rows_per_s <= 0:
            return 1.0
        return max(1.0, self._queue.num_rows / self._recent_rows_per_s)

    def _expire(self, item: Waiting) -> None:
        """A queue limit or the full deadline passed: a queued request leaves the queue; a running
        one is answered now if its full deadline passed (the deadline watch comes back for it)."""
        now = time.monotonic()
        waited_ms = (now - item.enqueued_at) * 1e3
        if self._queue.remove(item):
            self._live_queue_shrank()
            item.future.set_exception(RequestTimeout(
                f"timeout: the request waited {waited_ms:.1f} ms in the queue, past its deadline"
            ))
        elif not item.future.done() and item.deadline is not None and now >= item.deadline:
            item.future.set_exception(RequestTimeout(
                f"timeout: the request's deadline passed after {waited_ms:.1f} ms, while its batch ran"
            ))
        self._set_idle_if_done()

    async def drain(self) -> None:
        """Wait until nothing is queued or running."""
        assert self._idle is not None, "drain before start"
        while self._queue.num_requests or self._background or self._num_running or self._bg_running:
            self._idle.clear()
            await self._idle.wait()

    async def stop(self) -> None:
        """Drain, then stop the workers and the executor."""
        if self._idle is not None:
            await self.drain()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        for task in self._bg_tasks:
            task.cancel()
        await asyncio.gather(*self._bg_tasks, return_exceptions=True)
        self._deadlines.close()

    async def _work(self) -> None:
        while True:
            batch = await self._next_batch()
            self._num_running += 1
            try:
                await self._run(batch)
            finally:
                self._num_running -= 1
                self._set_idle_if_done()

    def _set_idle_if_done(self) -> None:
        if (not self._queue.num_requests and not self._background and not self._num_running
                and not self._bg_running and self._idle is not None):
            self._idle.set()

    async def _background_work(self) -> None:
        """Background rows in full batches on the background thread, BACKGROUND_DEPTH batches handed
        to it at a time, beside the live batches (the second way in batching/share.py)."""
        assert self._bg_wake is not None
        max_rows = self._spec.max_batch_size
        while True:
            while not self._background or self._bg_running >= BACKGROUND_DEPTH or self._live_backlogged():
                self._bg_wake.clear()
                await self._bg_wake.wait()
            batch = self._take_background(max_rows or 1, time.monotonic(), [])
            self._bg_running += 1
            task = asyncio.ensure_future(self._run_background(batch))
            self._bg_tasks.add(task)
            task.add_done_callback(self._bg_tasks.discard)

    def _live_queue_shrank(self) -> None:
        """Live requests left the queue (into a batch, by their deadline, or cancelled): a background
        thread held back by a live backlog looks again."""
        if self._bg_wake is not None:
            self._bg_wake.set()

    def _live_backlogged(self) -> bool:
        """Live rows enough for a full batch wait: the engine is behind on live load, and the background
        thread takes no more batches until it catches up (the floor, rule 3, still moves the job)."""
        return self._queue.num_rows >= self._spec.max_batch_size

    async def _run_background(self, batch: list[Waiting]) -> None:
        assert self._bg is not None and self._bg_wake is not None
        try:
            await self._run(batch, self._bg)
        finally:
            self._bg_running -= 1
            self._bg_wake.set()
            self._set_idle_if_done()

    async def _next_batch(self) -> list[Waiting]:
        assert self._arrived is not None and self._slot_freed is not None, "work before start"
        while self._num_running >= self._instances or (
                not self._queue.num_requests and (self._bg is not None or not self._background)):
            if self._num_running >= self._instances:  # a lone request's own task holds the last slot
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self._arrived.clear()
            await self._arrived.wait()
        max_rows, now = self._spec.max_batch_size, time.monotonic()
        if not self._queue.num_requests:  # background work alone (share rule 4)
            return self._take_background(max(1, self.share.alone_rows(max_rows, now)) if max_rows else 1, now, [])
        if max_rows == 0:
            return self._account(self._queue.take(1, now), now)
        deadline = self._queue.oldest_enqueued_at() + self._delay_s
        while self._queue.num_requests and not self._should_close(deadline):
            seen = self._queue.num_pushed
            await self._quiet_turns()  # requests already read off sockets (or a queue) arrive
            if self._queue.num_pushed == seen and self._is_quiet_close():
                break
            if self._queue.num_pushed == seen:
                await self._wait_arrival(deadline)
        now = time.monotonic()
        if self._queue.num_rows >= max_rows:
            self.share.note_live_backlog(now)
        if not self._live_sees_background():
            return self._account(self._queue.take(max_rows, now), now)
        held = self.share.held_rows(max_rows, now)  # share rule 3
        if not held:
            self._floor_owed = 0
        live = self._queue.take(max_rows - held, now, at_least_one=not held) if self._queue.num_requests else []
        if held and not live:  # the first live request would not leave the held rows free
            return self._owed_or_live(held, max_rows, now)
        live_rows = sum(item.num_rows for item in live)
        spare = min(max_rows - live_rows, held) if self._bg is not None else self.share.spare_rows(max_rows, live_rows, held)
        return self._take_background(spare, now, live)

    def _owed_or_live(self, held: int, max_rows: int, now: float) -> list[Waiting]:
        """Held rows that no live batch has room for are owed, and run together as one short batch
        (or all the background rows waiting, if fewer) once that many are owed; until then the live
        requests run. The background share is the same as with a small batch of held rows before
        each live one, for a fraction of the batches (and of their hand-offs through the loop)."""
        self._floor_owed += held
        due = min(short_rows(max_rows), self._background.num_rows)
        if self._floor_owed >= due:
            self._floor_owed = 0
            return self._take_background(due, now, [])
        return self._account(self._queue.take(max_rows, now), now)

    def _account(self, live: list[Waiting], now: float) -> list[Waiting]:
        self.share.ran(sum(item.num_rows for item in live), 0, now)
        self._live_queue_shrank()
        return live

    def _take_background(self, max_rows: int, now: float, batch: list[Waiting]) -> list[Waiting]:
        """`batch` plus `max_rows` more rows of background work, cut from its requests as slices
        (batching/background.py); a model without batching takes one background request whole."""
        live_rows = sum(item.num_rows for item in batch)
        taken = self._background.take(max_rows if self._spec.max_batch_size else None)
        self.share.ran(live_rows, sum(item.num_rows for item in taken), now)
        if batch:
            self._live_queue_shrank()
        return batch + taken

    async def _quiet_turns(self) -> None:
        """The turns of the loop the latest request's front asked for (SchedulePolicy.quiet_turns), or
        fewer if a request arrives meanwhile."""
        seen = self._queue.num_pushed
        for _ in range(self._turns):
            await asyncio.sleep(0)
            if self._queue.num_pushed != seen:
                return

    def _should_close(self, deadline: float) -> bool:
        return self._queue.num_rows >= self._spec.max_batch_size or time.monotonic() >= deadline

    def _is_quiet_close(self) -> bool:
        """Nothing arrived in the last turn: close if no batch runs or a preferred size is reached."""
        return self._num_running == 0 or self._queue.num_rows in self._spec.preferred_batch_sizes

    async def _wait_arrival(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), remaining)
        except asyncio.TimeoutError:
            pass

    async def _run(self, batch: list[Waiting], guard: GuardedInfer | None = None) -> None:
        batch = [item for item in batch if not item.future.done()]
        if len(batch) < 2:
            groups = [batch] if batch else []
        else:
            groups = _by_trailing_shape(batch)
        for group in groups:
            await self._run_group(group, guard)

    def _short_wait_s(self, group: list[Waiting]) -> float:
        """The short path's wait for a lone request whose model answered lone rows within it lately."""
        is_lone = (len(group) == 1 and not self._queue.num_requests and not self._live_sees_background()
                   and self._num_running <= 1)
        if not is_lone or self._lone_compute_s >= SHORT_WAIT_S or self._contended:
            return 0.0
        self._short_streak += 1
        if self._short_streak >= PROBE_EVERY:  # the probe: this one runs with the loop free
            self._short_streak = 0
            return 0.0
        return SHORT_WAIT_S

    async def _run_group(self, group: list[Waiting], guard: GuardedInfer | None = None) -> None:
        started = time.monotonic()
        failed = False
        wait_s = self._short_wait_s(group) if guard is None else 0.0
        pushed = self._queue.num_pushed
        try:
            merged = group[0].inputs if len(group) == 1 else _concat([item.inputs for item in group])
            outputs = await (guard or self._guard).run(merged, wait_s)
            if not wait_s and guard is None:  # the loop was free while it ran: did requests come meanwhile?
                self._contended = self._queue.num_pushed != pushed
            self._deliver(group, outputs)
        except InvalidInput as exc:
            if len(group) > 1:  # one request's data: run each alone, so only that one gets the 400
                for item in group:
                    await self._run_group([item], guard)
                return
            failed = True
            _settle(group[0], error=exc)
        except Exception as exc:
            failed = True
            error = exc if isinstance(exc, InferenceFailed) else InferenceFailed(f"{type(exc).__name__}: {exc}")
            for item in group:
                _settle(item, error=error)
        self._deadlines.prune()
        self._observe(group, started, failed, wait_s > 0, on_bg_thread=guard is not None)

    def _observe(self, batch: list[Waiting], started: float, failed: bool, is_short: bool = False,
                 on_bg_thread: bool = False) -> None:
        finished = time.monotonic()
        num_rows = sum(item.num_rows for item in batch)
        rate = num_rows / max(finished - started, 1e-6)
        self._recent_rows_per_s = rate if self._recent_rows_per_s == 0 else 0.9 * self._recent_rows_per_s + 0.1 * rate
        if len(batch) == 1 and not failed and not on_bg_thread:
            self._lone_compute_s = 0.8 * self._lone_compute_s + 0.2 * (finished - started)
        if self._observer is not None:
            self._observer(
                BatchStats(
                    num_requests=len(batch),
                    num_rows=num_rows,
                    queue_s=tuple(started - item.enqueued_at for item in batch),
                    compute_s=finished - started,
                    failed=failed,
                    is_short=is_short,
                )
            )

    def _deliver(self, batch: list[Waiting], outputs: Tensors) -> None:
        """Split the batch's outputs back by row ranges: views, no copies."""
        if len(batch) == 1:
            _settle(batch[0], outputs)
            return
        total = sum(item.num_rows for item in batch)
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != total:
                raise InferenceFailed(f"output {name!r} has {array.shape[:1]} rows for a batch of {total}")
        start = 0
        for item in batch:
            end = start + item.num_rows
            _settle(item, {name: array[start:end] for name, array in outputs.items()})
            start = end


def _settle(item: Waiting, outputs: Tensors | None = None, error: BaseException | None = None) -> None:
    """Answer one request unless its deadline already did, and stop its deadline timer."""
    if item.timer is not None:
        item.timer.cancel()
    if item.future.done():
        return
    if error is not None:
        item.future.set_exception(error)
    else:
        item.future.set_result(outputs)


def _by_trailing_shape(batch: list[Waiting]) -> list[list[Waiting]]:
    """Requests grouped by the shapes and dtypes of their tensors past the batch dimension, in
    arrival order within each group: only such requests can be concatenated row-wise."""
    groups: dict[tuple, list[Waiting]] = {}
    for item in batch:
        key = tuple((name, array.shape[1:], array.dtype) for name, array in item.inputs.items())
        groups.setdefault(key, []).append(item)
    return list(groups.values())


def _concat(requests: list[Tensors]) -> Tensors:
    """One contiguous array per input, rows in request order: each request's rows are copied once."""
    return {name: np.concatenate([r[name] for r in requests], axis=0) for name in requests[0]}
