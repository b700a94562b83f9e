"""What serves an opened version (registry/opening.py's Runtime) in the server: a batched runtime
gets its guard, its batcher (with an observer feeding metrics and Triton statistics) and its response
cache; a generative runtime gets an LLMEngine and no batcher. Called on the loop by the loader."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from mlserve.batching.cache import ResponseCache, SharedLevel
from mlserve.batching.dynamic import BatchStats, DynamicBatcher
from mlserve.batching.guard import GuardedInfer
from mlserve.monitor.metrics import Metrics
from mlserve.monitor.stats import InferenceStatistics
from mlserve.registry.opening import BatchedRuntime, GenerativeRuntime
from mlserve.spec import ModelConfig
from mlserve.spec.model import BatchingSpec
from mlserve.state import StateStore

if TYPE_CHECKING:
    from mlserve.batching.llm_engine import LLMEngine


def start_batcher(runtime: BatchedRuntime, config: ModelConfig, model: str, version: int, metrics: Metrics,
                  stats: InferenceStatistics) -> DynamicBatcher:
    """The version's batcher over its guarded backend, started; its statistics start from zero."""
    batcher = DynamicBatcher(
        GuardedInfer.for_model(runtime.backend.infer, config, f"{model}/{version}"),
        config.batching, f"{model}-{version}",
        instances=config.instances, observer=_observer(metrics, stats, model, str(version)),
    )
    batcher.start()
    return batcher


def response_cache(model: str, version: str, fingerprint: str, spec: BatchingSpec, metrics: Metrics,
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


def start_engine(runtime: GenerativeRuntime, model: str, version: int, metrics: Metrics) -> LLMEngine:
    """The version's continuous batcher, started on its own thread."""
    from mlserve.batching.llm_engine import LLMEngine
    from mlserve.batching.llm_metrics import LLMStepMetrics

    engine = LLMEngine(runtime.backend, f"{model}-{version}", LLMStepMetrics(metrics, model, str(version)))
    engine.start()
    return engine


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
