"""Prometheus metrics on an explicit registry; callers pass labels in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector

# Sub-millisecond to tens of seconds: an inference server's latencies.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Every metric family mlserve exports, declared once on one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry, namespace="mlserve")
        r = self.registry
        self.requests = Counter(
            "mlserve_requests", "Inference requests by outcome.", ["model", "version", "protocol", "code"], registry=r
        )
        self.request_latency = Histogram(
            "mlserve_request_duration_seconds", "Time from request decoded to response encoded.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_latency = Histogram(
            "mlserve_queue_duration_seconds", "Time a request waited in its version's queue.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.compute_latency = Histogram(
            "mlserve_compute_duration_seconds", "Time a batch spent in the engine.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "mlserve_batch_size", "Rows per executed batch.", ["model", "version"], buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "mlserve_batch_requests", "Requests per executed batch.", ["model", "version"],
            buckets=BATCH_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge(
            "mlserve_queue_depth", "Requests waiting in a version's queue.", ["model", "version"], registry=r
        )
        self.model_ready = Gauge(
            "mlserve_model_ready", "1 when a model version is ready to serve.", ["model", "version"], registry=r
        )
        self.model_load_seconds = Gauge(
            "mlserve_model_load_duration_seconds", "Time the last load of a version took.", ["model", "version"],
            registry=r,
        )
        self.model_load_failures = Counter(
            "mlserve_model_load_failures", "Model version loads that failed.", ["model"], registry=r
        )

        # --- LLM engine (continuous batching, paged KV cache) ---
        self.llm_ttft = Histogram(
            "mlserve_llm_time_to_first_token_seconds", "Time from request queued to its first token.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.llm_itl = Histogram(
            "mlserve_llm_inter_token_latency_seconds", "Time between consecutive tokens of one request.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.llm_running = Gauge(
            "mlserve_llm_running_sequences", "Sequences in the running batch.", ["model", "version"], registry=r
        )
        self.llm_waiting = Gauge(
            "mlserve_llm_waiting_sequences", "Sequences waiting for the running batch.", ["model", "version"],
            registry=r,
        )
        self.llm_kv_blocks_used = Gauge(
            "mlserve_llm_kv_blocks_used", "KV blocks held by sequences.", ["model", "version"], registry=r
        )
        self.llm_kv_blocks_free = Gauge(
            "mlserve_llm_kv_blocks_free", "KV blocks no sequence holds (prefix-cache blocks included).",
            ["model", "version"], registry=r,
        )
        self.llm_preemptions = Counter(
            "mlserve_llm_preemptions", "Sequences preempted (to be recomputed) for lack of KV blocks.",
            ["model", "version"], registry=r,
        )
        self.llm_prompt_tokens = Counter(
            "mlserve_llm_prompt_tokens", "Prompt tokens received.", ["model", "version"], registry=r
        )
        self.llm_generation_tokens = Counter(
            "mlserve_llm_generation_tokens", "Tokens generated.", ["model", "version"], registry=r
        )
        self.llm_kv_slot_steps_allocated = Counter(
            "mlserve_llm_kv_slot_steps_allocated",
            "KV token slots allocated to running sequences, summed over engine steps (waste = 1 - used/allocated).",
            ["model", "version"], registry=r,
        )
        self.llm_kv_slot_steps_used = Counter(
            "mlserve_llm_kv_slot_steps_used", "KV token slots holding a token, summed over engine steps.",
            ["model", "version"], registry=r,
        )

    def forget_version(self, model: str, version: str) -> None:
        """Drop the per-version series of an unloaded version so label sets stay bounded."""
        for family in (
            self.request_latency, self.queue_latency, self.compute_latency, self.batch_size,
            self.batch_requests, self.queue_depth, self.model_ready, self.model_load_seconds,
        ):
            try:
                family.remove(model, version)
            except KeyError:
                pass

    def render(self) -> bytes:
        return generate_latest(self.registry)
