"""Feeds one LLM engine's counters, gauges and latency histograms (thread-safe Prometheus calls)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlserve.monitor.metrics import Metrics

if TYPE_CHECKING:
    from mlserve.batching.continuous import SchedulePlan
    from mlserve.batching.llm_engine import LLMEngine


class LLMObserver:
    """The engine's metric children for one model version; a no-op without a Metrics object."""

    def __init__(self, metrics: Metrics | None, model: str = "", version: str = "") -> None:
        self._m = metrics
        self._labels = (model, version)
        if metrics is None:
            return
        labels = self._labels
        self._ttft = metrics.llm_ttft.labels(*labels)
        self._itl = metrics.llm_itl.labels(*labels)
        self._running = metrics.llm_running.labels(*labels)
        self._waiting = metrics.llm_waiting.labels(*labels)
        self._used = metrics.llm_kv_blocks_used.labels(*labels)
        self._free = metrics.llm_kv_blocks_free.labels(*labels)
        self._preemptions = metrics.llm_preemptions.labels(*labels)
        self._prefix_hits = metrics.llm_prefix_cache_hits.labels(*labels)
        self._prefix_hits_seen = 0
        self._prompt = metrics.llm_prompt_tokens.labels(*labels)
        self._generated = metrics.llm_generation_tokens.labels(*labels)
        self._slots_allocated = metrics.llm_kv_slot_steps_allocated.labels(*labels)
        self._slots_used = metrics.llm_kv_slot_steps_used.labels(*labels)

    def prompt_tokens(self, count: int) -> None:
        if self._m is not None:
            self._prompt.inc(count)

    def token(self, since_previous_s: float, is_first: bool) -> None:
        if self._m is None:
            return
        (self._ttft if is_first else self._itl).observe(since_previous_s)
        self._generated.inc()

    def step(self, engine: LLMEngine, plan: SchedulePlan, compute_s: float) -> None:
        if self._m is None:
            return
        self.pool(engine)
        self._slots_allocated.inc(engine.kv_slots_allocated)
        self._slots_used.inc(engine.kv_slots_used)
        if plan.preempted:
            self._preemptions.inc(len(plan.preempted))
        hits = engine.scheduler.block_manager.num_prefix_hits
        if hits > self._prefix_hits_seen:
            self._prefix_hits.inc(hits - self._prefix_hits_seen)
            self._prefix_hits_seen = hits

    def pool(self, engine: LLMEngine) -> None:
        if self._m is None:
            return
        blocks = engine.scheduler.block_manager
        self._running.set(engine.num_running)
        self._waiting.set(engine.num_waiting)
        self._used.set(blocks.num_used_blocks)
        self._free.set(blocks.num_free_blocks)

    def forget(self) -> None:
        """Drop this version's series once it is unloaded."""
        if self._m is None:
            return
        m = self._m
        for family in (
            m.llm_ttft, m.llm_itl, m.llm_running, m.llm_waiting, m.llm_kv_blocks_used, m.llm_kv_blocks_free,
            m.llm_preemptions, m.llm_prefix_cache_hits, m.llm_prompt_tokens, m.llm_generation_tokens, m.llm_kv_slot_steps_allocated,
            m.llm_kv_slot_steps_used,
        ):
            try:
                family.remove(*self._labels)
            except KeyError:
                pass
