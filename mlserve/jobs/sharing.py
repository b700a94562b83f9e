"""How an in-server job shares a version with live traffic, and how a job finds its version.

A job with no priority of its own is background work: it hands a whole chunk's batches to the
version's batcher at once through `submit_background`, so its rows are always waiting when a batch is
formed, and the batcher's share rule (batching/share.py) decides how many of them each batch takes
(cut to the rows it has room for: batching/background.py): the rest of a short batch beside live
rows, a guaranteed floor under any load, and batches of their own when no live request waits. A job
given a `priority` queues as live requests of that level. On a version with `[batching]
background_process = true` a job with no priority runs whole in a child process instead
(jobs/child.py), unless its files are on S3. On a generation model it hands the engine a few
requests at a time, behind waiting live ones.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from mlserve.batching.dynamic import DynamicBatcher, SchedulePolicy, Tensors
from mlserve.errors import InvalidInput, ModelNotReady
from mlserve.jobs.generate import BatchGenerator, Generates, Parse, job_submit
from mlserve.jobs.manager import Target
from mlserve.jobs.openai_batch import OPENAI_FORMATS, batch_info
from mlserve.registry.served import ServedModel, ServedVersion
from mlserve.registry.serving import GenerativeServing
from mlserve.spec import TokenLimits

_YIELD_POLL_S = 0.001
_YIELD_MAX_S = 0.1
"""A job on a generation model waits for live requests ahead of it at most this long per batch."""
_LLM_REQUESTS_PER_BATCH = 8
"""Requests a job on a generation model hands the engine at once: live requests never queue behind many."""
WAITING_FOR_LIVE = "waiting: live load"


def _check_ready(served: ServedVersion) -> None:
    if not served.is_ready:
        raise ModelNotReady(f"model {served.model!r} version {served.version} is {served.state.name.lower()}")


class BackgroundRows:
    """A job's rows as background work on one version's batcher (the share rule decides when they run)."""

    def __init__(self, served: ServedVersion, batcher: DynamicBatcher) -> None:
        self._served = served
        self._batcher = batcher

    async def __call__(self, inputs, num_rows):
        """One batch (a failed batch's halves, when the run looks for its bad rows)."""
        _check_ready(self._served)
        return await self._batcher.submit_background(inputs, num_rows)

    async def batches(self, batches: list[Tensors]) -> list[Tensors | Exception]:
        """A chunk's batches queued at once, answered in order, each with its outputs or its error."""
        _check_ready(self._served)
        submit = self._batcher.submit_background
        answers = await asyncio.gather(*(submit(b, len(next(iter(b.values())))) for b in batches),
                                       return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, Exception):
                raise answer
        return list(answers)

    def status(self) -> str:
        """`waiting: live load` while live traffic holds the job to its floor share."""
        return WAITING_FOR_LIVE if self._batcher.share.is_held_to_floor(time.monotonic()) else ""

    def process_status(self) -> str:
        """For a job in a child process (jobs/child.py), which the share rule does not see:
        `waiting: live load` while live rows fill whole batches (the host then has little CPU time
        left for the child's lowest priority), or while the job, run here, is held to its floor."""
        share, now = self._batcher.share, time.monotonic()
        return WAITING_FOR_LIVE if share.is_live_backlogged(now) or share.is_held_to_floor(now) else ""


class AtLevel:
    """A job given a priority: its rows queue as live requests of that level."""

    def __init__(self, served: ServedVersion, batcher: DynamicBatcher, policy: SchedulePolicy) -> None:
        self._served = served
        self._batcher = batcher
        self._policy = policy

    async def __call__(self, inputs, num_rows):
        _check_ready(self._served)
        return await self._batcher.submit(inputs, num_rows, self._policy)


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


def _generation_target(served: ServedVersion, serving: GenerativeServing, priority: int | None,
                       generate: BatchGenerator) -> Target:
    """Requests go through InferenceService.generate, as /v1 requests do (to the model's current version)."""
    if priority is not None:
        raise InvalidInput("priority is not supported for jobs on generation models")
    infer = LLMLiveFirst(serving.engine, generate)
    return Target(served.version, batch_info(serving.engine, _LLM_REQUESTS_PER_BATCH), infer, OPENAI_FORMATS)


class JobModels(Generates, Protocol):
    """What a job asks of the models (the server's data plane answers it): a version, found the way a
    request finds it, and generations."""

    async def ensure_loaded(self, name: str) -> None: ...

    def pick(self, name: str, version: str | None) -> ServedVersion: ...

    def model(self, name: str) -> ServedModel: ...


def resolver(models: JobModels, limits: TokenLimits, parse: Parse):
    """Jobs find their version the way requests do (loading a lazy model), pinned to an exact version;
    `parse` decodes OpenAI bodies for jobs on generation models (the protocol layer's decoder), whose
    requests are held to `limits`."""

    async def resolve(model: str, version: int | None, priority: int | None) -> Target:
        await models.ensure_loaded(model)
        served = models.pick(model, str(version) if version is not None else None)
        serving = served.serving
        if isinstance(serving, GenerativeServing):
            return _generation_target(served, serving, priority,
                                      BatchGenerator(model, parse, job_submit(models, limits)))
        assert serving is not None, "the router picks ready versions only"
        levels = models.model(model).entry.config.batching.priority_levels
        if priority is not None and not 1 <= priority <= levels:
            raise InvalidInput(f"priority must lie in 1..{levels} for model {model!r}, got {priority}")
        if priority is None:
            rows = BackgroundRows(served, serving.batcher)
            if serving.files is not None and serving.files.config.batching.background_process:
                return Target(served.version, served.info, rows, status=rows.process_status,
                              infer_batches=rows.batches, files=serving.files)
            return Target(served.version, served.info, rows, status=rows.status, infer_batches=rows.batches)
        return Target(served.version, served.info, AtLevel(served, serving.batcher, SchedulePolicy(priority=priority)))

    return resolve
