"""What serves an opened version (registry/opening.py's Runtime) in the server, one type per kind:
a `BatchedServing` holds a batched runtime with its batcher (guarded, with an observer feeding metrics
and Triton statistics) and its response cache; a `GenerativeServing` holds a generative runtime with
the LLMEngine that batches its sequences. A ServedVersion carries exactly one of them once loaded,
and callers ask it by type (isinstance), never by probing optional fields. Built on the loop by the
loader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Union

import numpy as np

from mlserve.batching.cache import ResponseCache, SharedLevel
from mlserve.batching.dynamic import BatchStats, DynamicBatcher
from mlserve.batching.guard import GuardedInfer
from mlserve.batching.share import BACKGROUND_NICE
from mlserve.monitor.metrics import Metrics
from mlserve.monitor.stats import InferenceStatistics
from mlserve.registry.opening import BatchedRuntime, GenerativeRuntime, VersionFiles
from mlserve.spec import ModelConfig, SchedulePolicy
from mlserve.spec.model import BatchingSpec
from mlserve.state import StateStore

if TYPE_CHECKING:
    from mlserve.batching.llm_engine import LLMEngine
    from mlserve.engine.llm.tokenizer import LLMTokenizer

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class BatchedServing:
    """A batched version in the server: its runtime, the batcher in front of it and its response cache."""

    runtime: BatchedRuntime
    batcher: DynamicBatcher
    cache: ResponseCache | None = None
    """None where [batching] cache_size is 0."""
    files: VersionFiles | None = None
    """How the version was opened: a job in a child process opens it again (jobs/child.py)."""

    @property
    def num_queued(self) -> int:
        """Requests waiting in the batcher's queue."""
        return self.batcher.num_queued

    @property
    def num_in_flight(self) -> int:
        """Requests queued or running."""
        return self.batcher.num_in_flight

    async def infer(self, inputs: Tensors, num_rows: int, policy: SchedulePolicy) -> Tensors:
        """The response cache when there is one (local level, then the shared level on a local miss; a
        hit never reaches the batcher), else the batcher."""
        cache = self.cache
        if cache is None:
            return await self.batcher.submit(inputs, num_rows, policy)
        key = cache.key(inputs)
        outputs = cache.get(key)
        if outputs is None and cache.shared is not None:
            outputs = await cache.get_shared(key)
        if outputs is None:
            outputs = await self.batcher.submit(inputs, num_rows, policy)
            cache.put(key, outputs)
        return outputs

    async def stop(self) -> None:
        """Let queued requests finish, then stop the batcher (the runtime is the caller's to close)."""
        await self.batcher.stop()


@dataclass(frozen=True, slots=True)
class GenerativeServing:
    """A generative version in the server: its runtime (tokenizer, vocabulary, context length) and the
    LLMEngine that runs its sequences. It has no batcher: the engine batches."""

    runtime: GenerativeRuntime
    engine: LLMEngine

    @property
    def tokenizer(self) -> LLMTokenizer:
        return self.runtime.tokenizer

    @property
    def vocab_size(self) -> int:
        """The version's one vocabulary size: token ids a request names must lie below it."""
        return self.runtime.vocab_size

    @property
    def max_model_len(self) -> int:
        """The context length: prompt and generated tokens of one sequence together."""
        return self.runtime.max_model_len

    @property
    def num_queued(self) -> int:
        """Sequences waiting for the engine to schedule them."""
        return self.engine.num_waiting

    @property
    def num_in_flight(self) -> int:
        """Requests submitted and not yet finished."""
        return self.engine.num_active

    async def stop(self) -> None:
        """Take nothing new, let running requests finish (bounded), then stop the engine's thread."""
        await self.engine.stop()


Serving = Union[BatchedServing, GenerativeServing]


def serve_batched(runtime: BatchedRuntime, config: ModelConfig, model: str, version: int, fingerprint: str,
                  metrics: Metrics, stats: InferenceStatistics, state_store: StateStore | None,
                  files: VersionFiles | None = None) -> BatchedServing:
    """The version's batcher over its guarded runtime, started (its statistics start from zero), and
    its response cache where configured. `files`: how the version was opened (the loader's)."""
    batcher = DynamicBatcher(
        GuardedInfer.for_model(runtime.backend.infer, config, f"{model}/{version}",
                               stoppable=getattr(runtime.backend, "stoppable_infer", None)),  # ONNX Runtime's
        config.batching, f"{model}-{version}",
        instances=config.instances, observer=_observer(metrics, stats, model, str(version)),
        background=_background_thread(runtime, config, model, version),
    )
    batcher.start()
    cache = _response_cache(model, str(version), fingerprint, config.batching, metrics, state_store)
    return BatchedServing(runtime, batcher, cache, files)


def _background_thread(runtime: BatchedRuntime, config: ModelConfig, model: str, version: int
                       ) -> GuardedInfer | None:
    """The worker that runs background rows beside live batches (`[batching] background_thread`)."""
    if not config.batching.background_thread:
        return None
    assert runtime.runs_concurrently, "refused at load (registry/opening.py)"
    return GuardedInfer.for_model(runtime.backend.infer, config, f"{model}/{version}/background",
                                  nice=BACKGROUND_NICE, one_thread=True)


def _response_cache(model: str, version: str, fingerprint: str, spec: BatchingSpec, metrics: Metrics,
                   state_store: StateStore | None) -> ResponseCache | None:
    """The local LRU, and the shared level where the state store is shared and the TTL is not 0."""
    if spec.cache_size <= 0:
        return None
    m = metrics
    shared = None
    if state_store is not None and state_store.is_shared and spec.shared_cache_ttl_s > 0:
        shared = SharedLevel(state_store, model, version, fingerprint, spec,
                             m.cache_hits.labels(model, version, "shared"),
                             m.cache_misses.labels(model, version, "shared"))
    return ResponseCache(model, version, spec.cache_size, m.cache_hits.labels(model, version, "local"),
                         m.cache_misses.labels(model, version, "local"), shared)


def serve_generative(runtime: GenerativeRuntime, model: str, version: int, metrics: Metrics) -> GenerativeServing:
    """The version's continuous batcher, started on its own thread."""
    from mlserve.batching.llm_engine import LLMEngine
    from mlserve.batching.llm_metrics import LLMStepMetrics

    engine = LLMEngine(runtime.backend, f"{model}-{version}", LLMStepMetrics(metrics, model, str(version)))
    engine.start()
    return GenerativeServing(runtime, engine)


def _observer(metrics: Metrics, stats: InferenceStatistics, model: str, version: str) -> Callable[[BatchStats], None]:
    m = metrics
    batch_size = m.batch_size.labels(model, version)
    batch_requests = m.batch_requests.labels(model, version)
    queue = m.queue_latency.labels(model, version)
    compute = m.compute_latency.labels(model, version)
    stats.reset(model, version)
    counters = stats.version(model, version)

    def observe(batch: BatchStats) -> None:
        counters.record(batch.num_requests, batch.num_rows, batch.queue_s, batch.compute_s, batch.failed)
        batch_size.observe(batch.num_rows)
        batch_requests.observe(batch.num_requests)
        compute.observe(batch.compute_s)
        for waited in batch.queue_s:
            queue.observe(waited)

    return observe
