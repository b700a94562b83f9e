"""How an in-server job shares a version with live traffic, and how a job finds its version.

A job queues its rows on the version's own batcher at the lowest priority level, one batch at a
time; it submits when nothing else is queued or running (waiting at most 100 ms, so it never
starves), and while live requests keep coming it leaves the worker idle as long as its last batch
ran. On a generation model it hands the engine a few requests at a time, behind waiting live ones.
"""

from __future__ import annotations

import asyncio
import time

from mlserve.batching.dynamic import SchedulePolicy
from mlserve.errors import InvalidInput, ModelNotReady, Overloaded, RequestTimeout
from mlserve.jobs.generate import BatchGenerator, Parse
from mlserve.jobs.manager import Target
from mlserve.jobs.openai_batch import OPENAI_FORMATS, batch_info
from mlserve.registry.served import ServedVersion
from mlserve.routing.generation import GenerationService
from mlserve.routing.service import InferenceService

_YIELD_POLL_S = 0.001
_YIELD_MAX_S = 0.1
"""A job waits for live requests ahead of it at most this long per batch, so it never starves."""
_LLM_REQUESTS_PER_BATCH = 8
"""Requests a job on a generation model hands the engine at once: live requests never queue behind many."""
_LIVE_WINDOW_S = 1.0
"""Live requests seen this recently make the job leave the worker idle as long as its last batch ran."""


class LiveFirst:
    """How a job shares a version's batcher with live traffic: it submits only when nothing else is
    queued or running (or after a bounded wait), and while live requests keep coming it runs at most
    half the time, so live requests find the worker, and the CPU, free."""

    def __init__(self, served: ServedVersion, policy: SchedulePolicy) -> None:
        self._served = served
        self._policy = policy
        self._live_seen_at = -_LIVE_WINDOW_S

    async def __call__(self, inputs, num_rows):
        while True:
            served = self._served
            if not served.is_ready:
                raise ModelNotReady(f"model {served.model!r} version {served.version} is {served.state.name.lower()}")
            await self._wait_for_quiet(served.batcher)
            started = time.monotonic()
            try:
                outputs = await served.batcher.submit(inputs, num_rows, self._policy)
            except (Overloaded, RequestTimeout):
                self._live_seen_at = time.monotonic()
                await asyncio.sleep(_YIELD_MAX_S)  # the queue is full of live work: try again shortly
                continue
            if time.monotonic() - self._live_seen_at < _LIVE_WINDOW_S:
                await asyncio.sleep(time.monotonic() - started)
            return outputs

    async def _wait_for_quiet(self, batcher) -> None:
        give_up_at = time.monotonic() + _YIELD_MAX_S
        while batcher.num_in_flight and time.monotonic() < give_up_at:
            self._live_seen_at = time.monotonic()
            await asyncio.sleep(_YIELD_POLL_S)


class LLMLiveFirst:
    """A job on a generation model: a few requests at a time, each batch held back (bounded) while
    live requests wait for the engine, so they are scheduled first."""

    def __init__(self, engine, generate) -> None:
        self._engine = engine
        self._generate = generate

    async def __call__(self, inputs, num_rows):
        give_up_at = time.monotonic() + _YIELD_MAX_S
        while self._engine.num_waiting and time.monotonic() < give_up_at:
            await asyncio.sleep(_YIELD_POLL_S)
        return await self._generate(inputs, num_rows)


def _generation_target(served: ServedVersion, model: str, priority: int | None, generate: BatchGenerator) -> Target:
    """Requests go through the GenerationService, as /v1 requests do (to the model's current version)."""
    if priority is not None:
        raise InvalidInput("priority is not supported for jobs on generation models")
    engine = served.llm_engine
    infer = LLMLiveFirst(engine, generate)
    return Target(served.version, batch_info(engine, _LLM_REQUESTS_PER_BATCH), infer, OPENAI_FORMATS)


def resolver(service: InferenceService, generation: GenerationService, parse: Parse):
    """Jobs find their version the way requests do (loading a lazy model), pinned to an exact version;
    `parse` decodes OpenAI bodies for jobs on generation models (the protocol layer's decoder)."""

    async def resolve(model: str, version: int | None, priority: int | None) -> Target:
        await service.loader.ensure_loaded(model)
        served = service.router.pick(model, str(version) if version is not None else None)
        if served.llm_engine is not None:
            return _generation_target(served, model, priority, BatchGenerator(model, parse, generation.submit))
        levels = service.router.model(model).entry.config.batching.priority_levels
        if priority is not None and not 1 <= priority <= levels:
            raise InvalidInput(f"priority must lie in 1..{levels} for model {model!r}, got {priority}")
        policy = SchedulePolicy(priority=priority or levels)
        return Target(served.version, served.info, LiveFirst(served, policy))

    return resolve
