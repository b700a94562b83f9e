"""The composition root: every service built here in one listed order, started in that order and
stopped in reverse, typed app keys, and one route table per protocol (/v2, /v1 as a
sub-application with OpenAI's error shape, admin)."""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from mlserve.config import Config
from mlserve.dataplane import DataPlane
from mlserve.dataplane.bandit import BanditDriver
from mlserve.dataplane.control import ModelControl
from mlserve.dataplane.mlflow_follower import MlflowFollower
from mlserve.dataplane.models import Models, Store
from mlserve import process
from mlserve.gc_policy import GcPolicy
from mlserve.monitor.hub import Monitor
from mlserve.monitor.metrics import Metrics
from mlserve.optimize.auto import AutoOptimizer
from mlserve.optimize.jobs import OptimizeJobs
from mlserve.server.http.admin import AdminHandlers
from mlserve.server.auth import AdminAudit, KeyRing, PathPolicy, TrustedProxies, warn_if_admin_open
from mlserve.server.http.batch_jobs import add_batch_job_routes
from mlserve.server.http.decode_pool import DecodePool
from mlserve.server.grpc.server import grpc_cleanup_ctx
from mlserve.server.limits import LIMITS
from mlserve.server.middleware import Gate, cors_signal, front_middleware
from mlserve.server.http.monitor import DriftHandlers
from mlserve.server.http.openai.routes import openai_app, vllm_routes
from mlserve.server.http.openapi import openapi_handler
from mlserve.server.http.optimize import optimize_routes
from mlserve.server.origin import BrowserGate
from mlserve.server.ratelimit import FailureThrottle, InFlight, TenantLimiter
from mlserve.server.state import ServerState
from mlserve.server.http.overview import OverviewSources
from mlserve.server.http.status import HistorySampler, StatusHandlers
from mlserve.server.http.traffic import TrafficHandlers
from mlserve.server.http.stats import stats_routes
from mlserve.server.http.v2 import V2Handlers
from mlserve.state import StateStore, open_state

log = logging.getLogger("mlserve.server")

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
MODELS = web.AppKey("models", Models)
PLANE = web.AppKey("plane", DataPlane)
STATE = web.AppKey("state", ServerState)
KEYRING = web.AppKey("keyring", KeyRing)
MONITOR = web.AppKey("monitor", Monitor)
V2 = web.AppKey("v2", V2Handlers)  # the infer handler the fast lane calls too (server/http/fastlane.py)
BROWSER = web.AppKey("browser", BrowserGate)  # the browser checks, which the fast lane applies too


# ---- services -------------------------------------------------------------------------------


@dataclass(slots=True)
class Services:
    """Every long-lived object of the server, built once by `build_services`."""

    config: Config
    state: ServerState
    metrics: Metrics
    gate: Gate
    monitor: Monitor
    models: Models
    """The repository, the loader, the inference service and the doors over them (mlserve/dataplane/models.py)."""
    status: HistorySampler
    optimize_jobs: OptimizeJobs
    decode_pool: DecodePool
    state_store: StateStore
    control: ModelControl
    plane: DataPlane
    """The door for inference and reads: every protocol handler calls it, never the service or the loader."""
    auto_optimizer: AutoOptimizer | None = None
    """Optimizes each new version of a model whose model.toml asks for it ([optimize] on_new_version)."""
    bandit: BanditDriver | None = None
    """Moves the split of every model whose [traffic] has a bandit (under a lease, through `control`)."""
    mlflow: MlflowFollower | None = None
    """An mlflow:// repository's MlflowFollower: rolls each @challenger out (through `control`) and
    writes the outcome back to the registry (None for other repositories)."""


@dataclass(frozen=True, slots=True)
class Stage:
    """One service's start and stop (either may be None; each may be sync or async)."""

    name: str
    start: Callable[[], Any] | None = None
    stop: Callable[[], Any] | None = None


def _gate(config: Config, state: ServerState, store: StateStore) -> Gate:
    """The browser checks, authentication, per-key limits and the in-flight bound, from the server,
    auth and limits sections; per-key limits count through the shared state store."""
    keys_file = Path(config.auth.keys_file) if config.auth.keys_file else None
    return Gate(
        PathPolicy.from_config(config.auth, config.server.host),
        KeyRing(keys_file, TenantLimiter(store=store), FailureThrottle(config.auth.failed_auth_burst, config.auth.failed_auth_per_s)),
        InFlight(config.limits.max_in_flight), state, config.server.max_body_bytes,
        BrowserGate.from_config(config.server), TrustedProxies.parse(config.server.trusted_proxies), AdminAudit(),
        config.limits.not_ready_when_saturated,
    )


def build_services(config: Config, store: Store | None = None) -> Services:
    state = ServerState()
    metrics = Metrics()
    shared = _state_store(config, metrics)
    models = Models.open(config, metrics, shared, store)
    monitor = Monitor(config.monitor, metrics)
    models.connect_monitor(monitor, metrics)
    status = HistorySampler(config.monitor, metrics, models.plane)
    control = models.control(shared)
    jobs = models.optimize_jobs(control, config.jobs, shared)
    return Services(config, state, metrics, _gate(config, state, shared), monitor, models, status,
                    jobs, DecodePool(config.limits), shared, control, models.plane, models.auto_optimizer(jobs, config),
                    models.bandit(shared, control), models.mlflow_follower(control))


def _state_store(config: Config, metrics: Metrics) -> StateStore:
    """The shared control state; its gauge follows the store's health (loss and return are logged there)."""
    store = open_state(config.state.url, config.state.prefix)
    gauge = metrics.state_backend_up.labels("memory" if config.state.url == "memory" else "redis")
    gauge.set(1 if store.is_up else 0)
    store.on_health(lambda is_up: gauge.set(1 if is_up else 0))
    return store


def stages(s: Services) -> list[Stage]:
    """Started top to bottom, stopped bottom to top. The monitor starts before the loader and stops
    after it, so every request answered while the batchers drain is still logged; traffic tasks
    (shadows, rollouts) stop before the loader drains the versions they use; the status history
samples only once the repository is loaded and stops first; keys close last. The state store connects
before the loader and closes after everything that writes to it; the control door takes the shared
state once the models are loaded, and stops before they unload."""

    gc_policy = GcPolicy(s.config.server.gc_freeze, s.config.server.gc_threshold)

    async def start_loader() -> None:
        gc_policy.apply()
        process.apply(s.config.server.process)  # before any model loads: torch's pool, the switch interval
        await s.models.start(on_reconciled=lambda source: gc_policy.freeze_heap(f"reconcile ({source})"))
        s.state.is_started = True
        ready = s.plane.num_ready_versions()
        log.info("repository %s: %d model version(s) ready", s.models.describe(), ready)

    async def start_state() -> None:
        await s.state_store.start()
        log.info("shared state: %s (%s)", s.state_store.describe(), "up" if s.state_store.is_up else "not reachable")

    async def stop_loader() -> None:
        s.state.is_stopping = True
        await s.models.close()

    return [
        Stage("keyring", start=lambda: warn_if_admin_open(s.gate.policy, s.gate.keyring), stop=s.gate.keyring.close),
        Stage("decode pool", stop=s.decode_pool.close),
        Stage("monitor", start=s.monitor.start, stop=s.monitor.close),
        Stage("repository sweep", start=s.models.sweep),  # a crash's debris, before the scan
        Stage("state store", start=start_state, stop=s.state_store.close),
        Stage("loader", start=start_loader, stop=stop_loader),
        Stage("model control", start=s.control.start, stop=s.control.close),
        # Writes through the control door, so it starts once that has the shared state, and stops before it.
        Stage("bandit", start=s.bandit.start if s.bandit else None, stop=s.bandit.close if s.bandit else None),
        Stage("mlflow challenger", start=s.mlflow.start if s.mlflow else None, stop=s.mlflow.close if s.mlflow else None),
        Stage("traffic", stop=s.models.close_traffic),
        Stage("status history", start=s.status.start, stop=s.status.stop),
        # Optimize jobs publish through the loader and traffic; at start, dead servers' job folders go.
        Stage("optimize jobs", start=s.optimize_jobs.sweep, stop=s.optimize_jobs.close),
        # After the jobs it starts; stops first, so a run the shutdown cancels stays queued for the next start.
        Stage("automatic optimization", start=s.auto_optimizer.start if s.auto_optimizer else None,
              stop=s.auto_optimizer.close if s.auto_optimizer else None),
    ]


async def _call(step: Callable[[], Any] | None) -> None:
    if step is not None:
        result = step()
        if inspect.isawaitable(result):
            await result


def lifecycle(ordered: list[Stage]):
    """One cleanup context for all stages: a stage that fails to start stops those before it."""

    async def run(app: web.Application):
        started: list[Stage] = []
        try:
            for stage in ordered:
                await _call(stage.start)
                started.append(stage)
            yield
        finally:
            for stage in reversed(started):
                try:
                    await _call(stage.stop)
                except Exception:
                    log.exception("stopping %s failed", stage.name)

    return run


# ---- routes ---------------------------------------------------------------------------------


async def _metrics_handler(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[METRICS]
    app[MODELS].update_gauges()
    for key_id, quota in app[KEYRING].limiter.usage().items():
        metrics.key_quota_used.labels(key_id).set(quota["used"])
        metrics.key_quota_limit.labels(key_id).set(quota["limit"])
    for key_id, quota in app[KEYRING].limiter.token_usage().items():
        metrics.key_token_quota_used.labels(key_id).set(quota["used"])
        metrics.key_token_quota_limit.labels(key_id).set(quota["limit"])
    for served in app[PLANE].served():
        for version, sv in served.versions.items():
            if sv.serving is not None:
                metrics.queue_depth.labels(served.name, str(version)).set(sv.num_queued)
    return web.Response(body=metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def v2_handlers(s: Services) -> V2Handlers:
    return V2Handlers(s.plane, s.control, s.state, s.metrics, s.gate, s.config.limits, s.decode_pool)


def v2_routes(s: Services, v2: V2Handlers) -> list[web.RouteDef]:
    """Open Inference Protocol, Triton's extensions, and mlserve's own per-model views under /v2."""
    admin = AdminHandlers(s.control, s.plane)
    drift = DriftHandlers(s.monitor, s.plane)
    traffic = TrafficHandlers(s.plane, s.control)
    return [
        web.get("/v2/health/live", v2.live),
        web.get("/v2/health/ready", v2.ready),
        web.get("/v2", v2.server_metadata),
        web.get("/v2/", v2.server_metadata),  # the same as /v2, as some clients ask
        web.post("/v2/repository/index", v2.repository_index),
        # Infer: aiohttp tries the resources under one prefix in the order they were added, so the
        # infer routes go before the other /v2/models/{model}... resources.
        web.post("/v2/models/{model}/infer", v2.infer),
        web.post("/v2/models/{model}/versions/{version}/infer", v2.infer),
        *[route for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}") for route in (
            web.get(prefix, v2.model_metadata),
            web.get(prefix + "/ready", v2.model_ready),
            web.get(prefix + "/config", v2.model_config),
            web.get(prefix + "/drift", drift.drift),
        )],
        web.post("/v2/models/{model}/feedback", traffic.feedback),
        *stats_routes(s.plane, s.metrics),
        web.post("/v2/repository/models/{model}/load", admin.load),
        web.post("/v2/repository/models/{model}/unload", admin.unload),
    ]


def admin_routes(s: Services) -> list[web.RouteDef]:
    """mlserve's control of what each model serves and how traffic splits."""
    admin = AdminHandlers(s.control, s.plane)
    traffic = TrafficHandlers(s.plane, s.control)
    return [
        web.get("/admin/models/{model}", admin.state),
        web.post("/admin/models/{model}/rollback", admin.rollback),
        web.post("/admin/models/{model}/pin", admin.pin),
        web.post("/admin/models/{model}/unpin", admin.unpin),
        web.get("/admin/models/{model}/traffic", traffic.get_traffic),
        web.put("/admin/models/{model}/traffic", traffic.put_traffic),
        web.get("/admin/models/{model}/experiment", traffic.get_experiment),
        web.get("/admin/models/{model}/rollout", traffic.get_rollout),
        web.post("/admin/models/{model}/rollout", traffic.start_rollout),
        web.delete("/admin/models/{model}/rollout", traffic.cancel_rollout),
        *optimize_routes(s.optimize_jobs, s.models, s.config.registry.trust_repository, s.auto_optimizer,
                         s.config.registry.trust_uploads),
    ]


def server_routes(s: Services) -> list[web.RouteDef]:
    """Process-wide endpoints outside any protocol."""
    return [
        web.get("/metrics", _metrics_handler),
        web.get("/openapi.json", openapi_handler(s.gate.keyring.is_enabled)),
    ]


def status_routes(s: Services) -> list[web.RouteDef]:
    """The status page: its files at / and /ui/ (open), the overview and histograms it reads."""
    sources = OverviewSources(s.plane, s.metrics, s.monitor, s.status.history,
                              time.time(), lambda: s.state.is_ready,
                              s.auto_optimizer.views if s.auto_optimizer else None)
    page = StatusHandlers(sources, s.gate.keyring.is_enabled, s.gate.policy.admin_served)
    return [
        web.get("/", page.page),
        web.get("/ui/session", page.session),
        web.get("/ui/{name}", page.asset),
        web.get("/status", page.overview),
        web.get("/status/models/{model}/versions/{version}/histogram", page.histogram),
    ]


def create_app(config: Config, store: Store | None = None) -> web.Application:
    s = build_services(config, store)
    # One middleware: the gate (auth, limits) and JSON errors in the route's protocol's shape (OpenAI's
    # on /v1 and vLLM's extras); the v2 infer route does both itself.
    app = web.Application(middlewares=[front_middleware(s.gate)],
                          client_max_size=config.server.max_body_bytes)
    if s.gate.browser.is_cors_on:
        app.on_response_prepare.append(cors_signal(s.gate.browser))
    app[CONFIG], app[STATE], app[METRICS], app[LIMITS] = config, s.state, s.metrics, config.limits
    app[KEYRING], app[MONITOR], app[MODELS] = s.gate.keyring, s.monitor, s.models
    app[PLANE] = s.plane
    app[V2] = v2_handlers(s)
    app[BROWSER] = s.gate.browser
    app.add_routes(v2_routes(s, app[V2]))
    app.add_routes(admin_routes(s))
    app.add_routes(server_routes(s))
    app.add_routes(status_routes(s))
    app.add_routes(vllm_routes(s.plane))
    app.add_subapp("/v1", openai_app(s.plane, s.metrics, s.gate.keyring.limiter))
    app.cleanup_ctx.append(lifecycle(stages(s)))
    # After the loader: gRPC starts once the repository is loaded and stops before it unloads.
    app.cleanup_ctx.append(grpc_cleanup_ctx(config, s.plane, s.control, s.state, s.metrics, s.gate))
    # After the lifecycle: jobs start once models load, stop before they unload.
    add_batch_job_routes(app, s.config, s.plane, s.state_store, s.metrics)
    return app
