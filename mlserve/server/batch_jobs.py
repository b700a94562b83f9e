"""`/v2/batch/jobs`: start, list, show and cancel in-server batch jobs. Jobs queue their rows on the
version's own batcher at the lowest priority level, one batch at a time, and hold back while live
requests wait in the queue: live traffic keeps its latency, jobs take the capacity it leaves."""

from __future__ import annotations

import asyncio
import time

import orjson
from aiohttp import web

from mlserve.batching.dynamic import SchedulePolicy
from mlserve.config import JobsConfig
from mlserve.errors import InvalidInput, ModelNotReady, Overloaded, RequestTimeout
from mlserve.jobs.manager import JobManager, Target
from mlserve.jobs.metrics import JobsCollector
from mlserve.monitor.metrics import Metrics
from mlserve.registry.served import ServedVersion
from mlserve.routing.service import InferenceService

JOBS = web.AppKey("batch_jobs", JobManager)

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


def _generation_target(served: ServedVersion, model: str, priority: int | None) -> Target:
    from mlserve.jobs.generate import BatchGenerator
    from mlserve.jobs.openai_batch import OPENAI_FORMATS, batch_info

    if priority is not None:
        raise InvalidInput("priority is not supported for jobs on generation models")
    engine = served.llm_engine
    infer = LLMLiveFirst(engine, BatchGenerator(engine, model))
    return Target(served.version, batch_info(engine, _LLM_REQUESTS_PER_BATCH), infer, OPENAI_FORMATS)


def resolver(service: InferenceService):
    """Jobs find their version the way requests do (loading a lazy model), pinned to an exact version."""

    async def resolve(model: str, version: int | None, priority: int | None) -> Target:
        await service.loader.ensure_loaded(model)
        served = service.router.pick(model, str(version) if version is not None else None)
        if served.llm_engine is not None:
            return _generation_target(served, model, priority)
        levels = service.router.model(model).entry.config.batching.priority_levels
        if priority is not None and not 1 <= priority <= levels:
            raise InvalidInput(f"priority must lie in 1..{levels} for model {model!r}, got {priority}")
        policy = SchedulePolicy(priority=priority or levels)
        return Target(served.version, served.info, LiveFirst(served, policy))

    return resolve


def _json(data, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


class BatchJobHandlers:
    """Parse, call the manager, encode."""

    def __init__(self, manager: JobManager) -> None:
        self._manager = manager

    async def create(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"the request body is not valid JSON: {exc}") from None
        record = await self._manager.submit(body)
        return _json(self._manager.view(record), 201)

    async def list(self, request: web.Request) -> web.Response:
        if not self._manager.is_enabled:
            return _json({"jobs": [], "enabled": False})
        return _json({"jobs": [self._manager.view(r) for r in self._manager.jobs.values()], "enabled": True})

    async def show(self, request: web.Request) -> web.Response:
        return _json(self._manager.view(self._manager.get(request.match_info["job_id"])))

    async def cancel(self, request: web.Request) -> web.Response:
        return _json(self._manager.view(await self._manager.cancel(request.match_info["job_id"])))


def add_batch_job_routes(app: web.Application, config: JobsConfig, service: InferenceService,
                         metrics: Metrics) -> None:
    """Routes, the manager's start/stop (after the loader starts, before it stops), its metrics."""
    manager = JobManager(config, resolver(service))
    app[JOBS] = manager
    handlers = BatchJobHandlers(manager)
    app.router.add_post("/v2/batch/jobs", handlers.create)
    app.router.add_get("/v2/batch/jobs", handlers.list)
    app.router.add_get("/v2/batch/jobs/{job_id}", handlers.show)
    app.router.add_delete("/v2/batch/jobs/{job_id}", handlers.cancel)
    metrics.registry.register(JobsCollector(manager))

    async def lifetime(app: web.Application):
        await manager.start()
        yield
        await manager.close()

    app.cleanup_ctx.append(lifetime)
