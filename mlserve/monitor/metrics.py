"""Prometheus metrics on an explicit registry; callers pass labels in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector

from mlserve.monitor.collectors import DriftCollector, GpuCollector, VersionCollector, gpu_reader

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
        self.http_connections = Counter(
            "mlserve_http_connections", "HTTP connections by front: lane (closed while the fast lane owned it) or "
            "aiohttp (handed over by the lane to aiohttp).", ["front"], registry=r,
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
        # Response cache (model.toml cache_size): hits never reach the batcher.
        # level: "local" (this process's LRU) or "shared" (the state store's level, asked on a local miss).
        self.cache_hits = Counter(
            "mlserve_cache_hits", "Requests answered from a version's response cache, by level.",
            ["model", "version", "level"], registry=r
        )
        self.cache_misses = Counter(
            "mlserve_cache_misses", "Cache lookups that found nothing at this level (a local miss goes on to "
            "the shared level where there is one, a shared miss to the batcher).", ["model", "version", "level"],
            registry=r
        )

        # --- model lifecycle (registry/loader.py): warm-up, cold start, failures by stage, swaps ---
        self.model_warmup_seconds = Gauge(
            "mlserve_model_warmup_duration_seconds", "Time the last warm-up of a version took.",
            ["model", "version"], registry=r,
        )
        self.load_failures_by_reason = Counter(
            "mlserve_model_load_failures_by_reason", "Rejected version loads by the stage that failed.",
            ["model", "reason"], registry=r,
        )
        self.cold_start_seconds = Gauge(
            "mlserve_cold_start_seconds", "Time from process start to the first repository pass done.", registry=r
        )
        self.reconciles = Counter(
            "mlserve_repository_reconciles", "Reconcile passes by trigger and outcome.", ["source", "outcome"],
            registry=r,
        )
        self.repository_up = Gauge(
            "mlserve_repository_up", "1 when the last repository pass could read the store (local, s3, mlflow).",
            ["kind"], registry=r,
        )
        self.transitions = Counter(
            "mlserve_model_transitions", "Pin, unpin and rollback requests served.", ["action", "source"], registry=r
        )
        self.loaded_models = Gauge("mlserve_loaded_models", "Models with a version in memory.", registry=r)
        self.loaded_bytes = Gauge(
            "mlserve_loaded_model_bytes", "Artifact bytes of the versions in memory (the budget's measure).",
            registry=r,
        )
        self.model_gpu_memory = Gauge(
            "mlserve_model_gpu_memory_bytes", "GPU memory a loaded version holds (measured at load, else "
            "declared or estimated).", ["model", "version", "device"], registry=r,
        )
        self.model_evictions = Counter(
            "mlserve_model_evictions", "Idle models unloaded to stay within the budget.", registry=r
        )

        # Traffic management (mlserve/routing): splits, breakers, shadow comparison, rollouts.
        self.traffic_weight = Gauge(
            "mlserve_traffic_weight", "Share of unversioned traffic a version's split gives it (0..1).",
            ["model", "version"], registry=r,
        )
        self.breaker_state = Gauge(
            "mlserve_breaker_state", "Circuit breaker of a version: 0 closed, 1 half-open, 2 open.",
            ["model", "version"], registry=r,
        )
        self.key_quota_used = Gauge(
            "mlserve_key_quota_used", "Requests of a key's quota taken cluster-wide in the current day or month "
            "(as this replica last leased).", ["key_id"], registry=r,
        )
        self.key_quota_limit = Gauge(
            "mlserve_key_quota_limit", "A key's quota: requests per day or month across every replica.", ["key_id"],
            registry=r,
        )
        self.key_token_quota_used = Gauge(
            "mlserve_key_token_quota_used", "Generation tokens (prompt and completion) of a key's token quota taken "
            "cluster-wide in the current day or month (as this replica last leased).", ["key_id"], registry=r,
        )
        self.key_token_quota_limit = Gauge(
            "mlserve_key_token_quota_limit", "A key's token quota: generation tokens per day or month across every "
            "replica.", ["key_id"], registry=r,
        )
        self.state_backend_up = Gauge(
            "mlserve_state_backend_up", "1 while the shared state store (memory or redis) answers, 0 while it is "
            "lost (replicas keep their last state and count locally).", ["backend"], registry=r,
        )
        self.fallback_requests = Counter(
            "mlserve_fallback_requests", "Requests routed away from a version that was refused (breaker open "
            "or not ready).", ["model", "version"], registry=r,
        )
        self.shadow_requests = Counter(
            "mlserve_shadow_requests", "Shadow copies by outcome: compared, dropped (queue full), failed.",
            ["model", "version", "outcome"], registry=r,
        )
        self.shadow_agreement = Gauge(
            "mlserve_shadow_agreement", "Share of rows where the shadow version agreed with the primary.",
            ["model", "version"], registry=r,
        )
        self.shadow_abs_diff = Gauge(
            "mlserve_shadow_mean_abs_diff", "Mean absolute difference of shadow and primary outputs.",
            ["model", "version"], registry=r,
        )
        self.rollout_state = Gauge(
            "mlserve_rollout_state", "Canary rollout of a version: 1 running, 2 promoted, 3 rolled back, 4 cancelled.",
            ["model", "version"], registry=r,
        )
        self.rollout_percent = Gauge(
            "mlserve_rollout_percent", "Traffic percent a rollout gives its canary now.", ["model", "version"], registry=r
        )
        self.rollout_rollbacks = Counter(
            "mlserve_rollout_rollbacks", "Rollouts rolled back automatically.", ["model", "version"], registry=r
        )

        # --- observability (issue 7): drift and prediction-log queues; version, drift and GPU
        # state are read at scrape time by the collectors registered with watch_*().
        self.drift_dropped = Counter(
            "mlserve_drift_dropped_observations", "Responses not fed to drift statistics because the queue was full.",
            ["model", "version"], registry=r,
        )
        self.prediction_log_records = Counter(
            "mlserve_prediction_log_records", "Sampled predictions written to the prediction log.", registry=r
        )
        self.prediction_log_dropped = Counter(
            "mlserve_prediction_log_dropped", "Sampled predictions not written, by reason (queue_full, write_error).",
            ["reason"], registry=r,
        )
        for reason in ("queue_full", "write_error"):
            self.prediction_log_dropped.labels(reason)
        self.prediction_log_queue = Gauge(
            "mlserve_prediction_log_queue_depth", "Sampled predictions waiting for the writer.", registry=r
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
        self.llm_prefix_cache_hits = Counter(
            "mlserve_llm_prefix_cache_hit_tokens", "Prompt tokens whose K/V came from the prefix cache, not computed.",
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
        self.llm_steps = Counter(
            "mlserve_llm_steps", "Engine steps that computed tokens, by how the forward ran (mode: graph = a "
            "captured decode graph replayed, eager = everything else).", ["model", "version", "mode"], registry=r,
        )

    def forget_version(self, model: str, version: str) -> None:
        """Drop the per-version series of an unloaded version so label sets stay bounded."""
        for family in (
            self.request_latency, self.queue_latency, self.compute_latency, self.batch_size,
            self.batch_requests, self.queue_depth, self.model_ready, self.model_load_seconds,
            self.drift_dropped,
            self.llm_ttft, self.llm_itl, self.llm_running, self.llm_waiting, self.llm_kv_blocks_used,
            self.llm_kv_blocks_free, self.llm_preemptions, self.llm_prefix_cache_hits, self.llm_prompt_tokens,
            self.llm_generation_tokens,
            self.llm_kv_slot_steps_allocated, self.llm_kv_slot_steps_used,
        ):
            try:
                family.remove(model, version)
            except KeyError:
                pass
        for family, value in ((self.llm_steps, "graph"), (self.llm_steps, "eager"),
                              (self.cache_hits, "local"), (self.cache_hits, "shared"),
                              (self.cache_misses, "local"), (self.cache_misses, "shared")):
            try:
                family.remove(model, version, value)
            except KeyError:
                pass

    def watch_versions(self, source) -> None:
        """Export mlserve_model_state and mlserve_in_flight_requests from `source()` at each scrape."""
        self.registry.register(VersionCollector(source))

    def watch_drift(self, source) -> None:
        """Export the drift families from the reports `source()` returns at each scrape."""
        self.registry.register(DriftCollector(source))

    def watch_gpu(self) -> bool:
        """Export GPU memory and utilisation when a GPU is visible; returns whether one is."""
        read = gpu_reader()
        if read is not None:
            self.registry.register(GpuCollector(read))
        return read is not None

    def render(self) -> bytes:
        return generate_latest(self.registry)
