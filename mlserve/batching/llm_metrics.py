"""Feeds one LLM engine's counters, gauges and latency histograms from the StepStats it reports
(thread-safe Prometheus calls, made on the engine thread)."""

from __future__ import annotations

from mlserve.batching.llm_engine import StepStats
from mlserve.engine.llm.graphs import StepMode
from mlserve.monitor.metrics import Metrics


class LLMStepMetrics:
    """The engine's metric children for one model version, bound once; called after every step."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        labels = (model, version)
        self._ttft = metrics.llm_ttft.labels(*labels)
        self._itl = metrics.llm_itl.labels(*labels)
        self._running = metrics.llm_running.labels(*labels)
        self._waiting = metrics.llm_waiting.labels(*labels)
        self._used = metrics.llm_kv_blocks_used.labels(*labels)
        self._free = metrics.llm_kv_blocks_free.labels(*labels)
        self._preemptions = metrics.llm_preemptions.labels(*labels)
        self._prefix_hits = metrics.llm_prefix_cache_hits.labels(*labels)
        self._prompt = metrics.llm_prompt_tokens.labels(*labels)
        self._generated = metrics.llm_generation_tokens.labels(*labels)
        self._slots_allocated = metrics.llm_kv_slot_steps_allocated.labels(*labels)
        self._slots_used = metrics.llm_kv_slot_steps_used.labels(*labels)
        self._steps = {mode: metrics.llm_steps.labels(*labels, mode.value) for mode in StepMode}

    def __call__(self, stats: StepStats) -> None:
        self._running.set(stats.num_running)
        self._waiting.set(stats.num_waiting)
        self._used.set(stats.num_used_blocks)
        self._free.set(stats.num_free_blocks)
        if stats.step_mode is not None:
            self._steps[stats.step_mode].inc()
        if stats.num_prompt_tokens:
            self._prompt.inc(stats.num_prompt_tokens)
        if stats.num_preempted:
            self._preemptions.inc(stats.num_preempted)
        if stats.num_prefix_hit_tokens:
            self._prefix_hits.inc(stats.num_prefix_hit_tokens)
        if stats.kv_slots_allocated:
            self._slots_allocated.inc(stats.kv_slots_allocated)
            self._slots_used.inc(stats.kv_slots_used)
        for waited in stats.first_token_s:
            self._ttft.observe(waited)
        for gap in stats.token_gap_s:
            self._itl.observe(gap)
        num_tokens = len(stats.first_token_s) + len(stats.token_gap_s)
        if num_tokens:
            self._generated.inc(num_tokens)
