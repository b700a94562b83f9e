"""The LLM engine: the scheduler, the model runner and the sampler stepping on one dedicated thread.
Requests come in through a locked inbox; tokens go back to each request's asyncio.Queue with
loop.call_soon_threadsafe, so the event loop never runs model code and never blocks on it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from mlserve.batching.continuous import SchedulePlan, Scheduler, SchedulerLimits, StepOutput
from mlserve.batching.detokenizer import TextState, next_delta
from mlserve.engine.llm.backend import LLMBackend
from mlserve.engine.llm.graphs import StepMode
from mlserve.engine.llm.sampler import Sampler
from mlserve.engine.llm.sequence import SeqStatus, Sequence
from mlserve.errors import InvalidInput, ModelNotReady, Overloaded
from mlserve.spec import RequestHandle, SamplingParams, TokenEvent

log = logging.getLogger("mlserve.llm")


@dataclass(frozen=True, slots=True)
class StepStats:
    """What one engine step did, handed to the observer after every step (idle ones too), as the
    dynamic batcher hands over BatchStats: the engine knows nothing of metrics."""

    num_running: int
    num_waiting: int
    num_used_blocks: int
    num_free_blocks: int
    num_prompt_tokens: int = 0
    """Prompt tokens of the requests the engine took in before this step."""
    num_preempted: int = 0
    kv_slots_allocated: int = 0
    kv_slots_used: int = 0
    first_token_s: tuple[float, ...] = ()
    """Time to first token of each request that got its first token this step."""
    token_gap_s: tuple[float, ...] = ()
    """Time since the previous token of each request that got a later token this step."""
    num_prefix_hit_tokens: int = 0
    """Prompt tokens whose K/V the requests admitted this step found in the prefix cache."""
    step_mode: StepMode | None = None
    """How the step's forward ran (a captured decode graph or eagerly); None for an idle step."""


StepObserver = Callable[[StepStats], None]


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    index: int = 0
    text: TextState = field(default_factory=TextState)
    last_token_s: float | None = None


class LLMEngine:
    """Continuous batching for one loaded LLM version. `step()` reads as plan, run, update."""

    def __init__(self, backend: LLMBackend, name: str, observer: StepObserver | None = None) -> None:
        settings = backend.settings
        self.backend = backend
        self.name = name
        self.max_model_len = backend.max_model_len
        self.max_waiting = settings.max_waiting
        self.scheduler = Scheduler(SchedulerLimits(
            backend.runner.num_blocks, settings.block_size, settings.max_num_seqs,
            settings.max_num_batched_tokens, backend.max_model_len, backend.eos_token_id,
        ))
        self.sampler = Sampler(backend.eos_token_id)
        self._observer = observer
        self._num_new_prompt_tokens = 0
        self._streams: dict[str, _Stream] = {}
        self._inbox: list[tuple[Sequence, str | None]] = []
        """New sequences, each with the id of the sibling whose prompt it waits for (n > 1)."""
        self._parked: dict[str, list[Sequence]] = {}
        self._prefix_hits_seen = 0
        self._aborts: list[str] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._accepting = True
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, TokenEvent]]] = {}
        self._thread: threading.Thread | None = None
        self.kv_slots_allocated = 0
        self.kv_slots_used = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"mlserve-llm-{self.name}", daemon=True)
        self._thread.start()

    async def stop(self, grace_s: float = 30.0) -> None:
        """Take nothing new, let running requests finish for up to `grace_s`, cancel the rest, join."""
        self._accepting = False
        deadline = time.monotonic() + grace_s
        while self._streams and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    def submit(self, prompt_token_ids: list[int], params: SamplingParams, priority: int | None = None) -> RequestHandle:
        """Queue one sequence (call on the event loop); its tokens arrive on the returned handle's queue."""
        return self.submit_many([prompt_token_ids], params, 1, priority)

    def submit_many(self, prompts: list[list[int]], params: SamplingParams, n: int,
                    priority: int | None = None, tenant: str | None = None) -> RequestHandle:
        """Queue `n` sequences per prompt, all reporting to one queue. The n - 1 siblings of a prompt
        wait until the first has computed it, then claim its full KV blocks from the prefix cache
        instead of computing them again. A seeded request gives sibling j the seed + j. `tenant`
        (an API key) shares admission fairly with other tenants; None: the request is its own."""
        if not self._accepting:
            raise ModelNotReady(f"{self.name} is being unloaded")
        for ids in prompts:
            self.check_lengths(len(ids), params.max_tokens)
        group, queue, loop, now = uuid.uuid4().hex, asyncio.Queue(), asyncio.get_running_loop(), time.monotonic()
        req_ids = []
        with self._cond:
            if len(self._inbox) + len(self.scheduler.waiting) + len(prompts) * n > self.max_waiting:
                raise Overloaded(f"{self.max_waiting} generation requests already waiting")
            for p_index, ids in enumerate(prompts):
                first = None
                for j in range(n):
                    index = p_index * n + j
                    req_id = group if len(prompts) * n == 1 else f"{group}-{index}"
                    own = params if j == 0 or params.seed is None else dataclasses.replace(params, seed=params.seed + j)
                    self._streams[req_id] = _Stream(loop, queue, index)
                    seq = Sequence(req_id, list(ids), own, arrival_s=now, priority=priority, tenant=tenant or group)
                    self._inbox.append((seq, first))
                    first = first or req_id
                    req_ids.append(req_id)
            self._cond.notify()
        return RequestHandle(group, queue, sum(len(ids) for ids in prompts), tuple(req_ids))

    def abort(self, req_id: str) -> None:
        """Cancel a sequence (its client went away); its blocks are freed before the next step."""
        with self._cond:
            if req_id in self._streams:
                self._aborts.append(req_id)
                self._cond.notify()

    def abort_request(self, handle: RequestHandle) -> None:
        for req_id in handle.req_ids or (handle.req_id,):
            self.abort(req_id)

    def check_lengths(self, num_prompt_tokens: int, max_tokens: int) -> None:
        if num_prompt_tokens < 1:
            raise InvalidInput("the prompt is empty")
        if num_prompt_tokens >= self.max_model_len:
            raise InvalidInput(
                f"the prompt has {num_prompt_tokens} tokens; this model's context is {self.max_model_len} tokens"
            )
        room = self.max_model_len - num_prompt_tokens
        if max_tokens > room:
            raise InvalidInput(
                f"max_tokens is {max_tokens}, but the prompt has {num_prompt_tokens} tokens of the "
                f"{self.max_model_len}-token context, leaving room for {room}"
            )

    @property
    def num_active(self) -> int:
        """Requests submitted and not yet finished (waiting, running or streaming out)."""
        return len(self._streams)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def step(self) -> None:
        plan = self.scheduler.schedule()
        if plan.is_empty:
            self._report(SchedulePlan((), (), ()), (), ())
            return
        runner = self.backend.runner
        logits = runner.run(list(plan.chunks))
        wanted = [c for c in plan.chunks if c.needs_logits]
        seqs = [self.scheduler.get(c.req_id) for c in wanted]
        sampled = self.sampler.sample(logits, [c.req_id for c in wanted], [s.params for s in seqs], seqs)
        outputs = self.scheduler.update(plan, sampled)
        self.kv_slots_allocated, self.kv_slots_used = self.scheduler.kv_slot_usage()
        first, gaps = self._emit(outputs, time.monotonic())
        self._report(plan, first, gaps, runner.last_step_mode)

    def _report(self, plan: SchedulePlan, first_token_s: tuple[float, ...], token_gap_s: tuple[float, ...],
                step_mode: StepMode | None = None) -> None:
        num_prompt_tokens, self._num_new_prompt_tokens = self._num_new_prompt_tokens, 0
        if self._observer is None:
            return
        blocks = self.scheduler.block_manager
        computed = not plan.is_empty
        hits, self._prefix_hits_seen = blocks.num_prefix_hits - self._prefix_hits_seen, blocks.num_prefix_hits
        self._observer(StepStats(
            self.num_running, self.num_waiting, blocks.num_used_blocks, blocks.num_free_blocks,
            num_prompt_tokens, len(plan.preempted),
            self.kv_slots_allocated if computed else 0, self.kv_slots_used if computed else 0,
            first_token_s, token_gap_s, hits, step_mode,
        ))

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._inbox or self._aborts or self._stopping or self.scheduler.has_work or self._parked):
                    self._cond.wait()
                if self._stopping:
                    break
                inbox, self._inbox = self._inbox, []
                aborts, self._aborts = self._aborts, []
            for seq, parent in inbox:
                if parent is None:
                    self.scheduler.add(seq)
                else:
                    self._parked.setdefault(parent, []).append(seq)
                self._num_new_prompt_tokens += seq.num_prompt_tokens
            for req_id in aborts:
                self._abort_now(req_id)
            self._unpark()
            try:
                self.step()
            except Exception as exc:
                log.exception("engine step failed on %s", self.name)
                self._fail_all(f"{type(exc).__name__}: {exc}")
            self._flush()
        self._fail_all("the model is being unloaded")
        self._flush()

    def _unpark(self) -> None:
        """Admit the siblings of every first sequence that has computed its prompt (or has ended)."""
        for parent_id in [p for p in self._parked if (self.scheduler.get(p) is None
                                                      or self.scheduler.get(p).num_output_tokens > 0)]:
            for seq in self._parked.pop(parent_id):
                self.scheduler.add(seq)

    def _abort_now(self, req_id: str) -> None:
        for siblings in self._parked.values():
            for seq in siblings:
                if seq.req_id == req_id:
                    siblings.remove(seq)
                    seq.status = SeqStatus.FINISHED_ABORTED
                    self._send(seq, TokenEvent("", (), (), seq.finish_reason, seq.num_prompt_tokens, 0))
                    return
        self._finish_early(req_id, SeqStatus.FINISHED_ABORTED)

    def _emit(self, outputs: list[StepOutput], now: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Send each request its new text; returns the step's times to first token and token gaps."""
        tokenizer = self.backend.tokenizer
        first: list[float] = []
        gaps: list[float] = []
        for out in outputs:
            seq, stream = out.seq, self._streams.get(out.seq.req_id)
            if stream is None:
                continue
            p = seq.params
            output_ids = seq.output_token_ids
            if seq.status is SeqStatus.FINISHED_STOPPED and output_ids[-1] in p.stop_token_ids:
                output_ids = output_ids[:-1]  # a stop token's text is not part of the answer
            stop = p.stop if seq.num_output_tokens >= p.min_tokens else ()
            delta = next_delta(stream.text, tokenizer.decode, output_ids, stop, seq.is_finished)
            if delta.hit_stop and not seq.is_finished:
                self.scheduler.finish(seq.req_id, SeqStatus.FINISHED_STOPPED)
            if stream.last_token_s is None:
                first.append(now - seq.arrival_s)
            else:
                gaps.append(now - stream.last_token_s)
            stream.last_token_s = now
            logprobs = ()
            if p.logprobs is not None:
                logprobs = ((out.sampled.token_id, out.sampled.logprob, out.sampled.top_logprobs),)
            self._send(seq, TokenEvent(
                delta.text, (out.sampled.token_id,), logprobs, seq.finish_reason,
                seq.num_prompt_tokens, seq.num_output_tokens, index=stream.index, logprob_sum=out.sampled.logprob,
            ))
        return tuple(first), tuple(gaps)

    def _send(self, seq: Sequence, event: TokenEvent) -> None:
        """Queue an event for delivery; `_flush` hands a step's events over in one loop callback."""
        stream = self._streams.get(seq.req_id)
        if stream is None:
            return
        if event.index != stream.index:
            event = dataclasses.replace(event, index=stream.index)
        if event.finish_reason is not None or event.error is not None:
            with self._cond:
                self._streams.pop(seq.req_id, None)
            self.sampler.forget(seq.req_id)
        self._outbox.setdefault(stream.loop, []).append((stream.queue, event))

    def _flush(self) -> None:
        """One call_soon_threadsafe per event loop per step, not one per token: waking the loop costs
        more than the put itself."""
        outbox, self._outbox = self._outbox, {}
        for loop, items in outbox.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that loop has closed; nobody is listening
                pass

    def _finish_early(self, req_id: str, status: SeqStatus) -> None:
        seq = self.scheduler.finish(req_id, status)
        if seq is not None:
            self._send(seq, TokenEvent("", (), (), seq.finish_reason, seq.num_prompt_tokens, seq.num_output_tokens))

    def _fail_all(self, message: str) -> None:
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
            self.scheduler.finish(seq.req_id, SeqStatus.FINISHED_ABORTED)
            self._send(seq, TokenEvent("", (), (), None, seq.num_prompt_tokens, seq.num_output_tokens, error=message))
        with self._cond:
            pending, self._inbox = [seq for seq, _ in self._inbox], []
        pending += [seq for siblings in self._parked.values() for seq in siblings]
        self._parked.clear()
        for seq in pending:
            self._send(seq, TokenEvent("", (), (), None, seq.num_prompt_tokens, 0, error=message))


def _deliver(items: list[tuple[asyncio.Queue, TokenEvent]]) -> None:
    for queue, event in items:
        queue.put_nowait(event)
