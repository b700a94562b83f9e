"""The aiohttp application: typed app keys, the route table, and one cleanup context per resource."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from mlserve.config import Config, RegistryConfig
from mlserve.monitor.metrics import Metrics
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.local import LocalStore
from mlserve.registry.store import Store
from mlserve.routing.service import InferenceService
from mlserve.server.admin import add_admin_routes
from mlserve.server.auth import KeyRing, PathPolicy
from mlserve.server.limits import LIMITS
from mlserve.server.middleware import Gate, error_middleware, gate_middleware
from mlserve.server.monitor_routes import add_monitor_routes
from mlserve.server.openai import add_openai_routes
from mlserve.server.openapi import add_openapi_routes
from mlserve.server.ratelimit import InFlight, TenantLimiter
from mlserve.server.state import ServerState
from mlserve.server.traffic import add_traffic_routes
from mlserve.server.v2 import V2Handlers

log = logging.getLogger("mlserve.server")

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
LOADER = web.AppKey("loader", HotSwapLoader)
SERVICE = web.AppKey("service", InferenceService)
STATE = web.AppKey("state", ServerState)
KEYRING = web.AppKey("keyring", KeyRing)


def open_store(uri: str, registry: RegistryConfig | None = None) -> Store:
    if uri.startswith("s3://"):
        from mlserve.registry.s3 import S3Store

        registry = registry or RegistryConfig(models=uri)
        cache = Path(registry.cache_dir).expanduser() if registry.cache_dir else Path.home() / ".cache" / "mlserve"
        return S3Store(uri, cache, registry.s3_endpoint or None, registry.s3_region or None)
    if "://" in uri:
        raise ValueError(f"unsupported model repository {uri!r}: give a local folder or s3://bucket/prefix")
    return LocalStore(Path(uri))


def _add_v2_routes(app: web.Application, v2: V2Handlers) -> None:
    r = app.router
    r.add_get("/v2/health/live", v2.live)
    r.add_get("/v2/health/ready", v2.ready)
    r.add_get("/v2", v2.server_metadata)
    r.add_post("/v2/repository/index", v2.repository_index)
    # aiohttp tries the resources under one prefix in the order they were added: infer goes first.
    r.add_post("/v2/models/{model}/infer", v2.infer)
    r.add_post("/v2/models/{model}/versions/{version}/infer", v2.infer)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(prefix, v2.model_metadata)
        r.add_get(prefix + "/ready", v2.model_ready)
        r.add_get(prefix + "/config", v2.model_config)


async def _metrics_handler(request: web.Request) -> web.Response:
    app = request.app
    loader, metrics = app[LOADER], app[METRICS]
    loader.update_gauges()
    for served in loader.models.values():
        for version, sv in served.versions.items():
            if sv.batcher is not None:
                metrics.queue_depth.labels(served.name, str(version)).set(sv.batcher.num_queued)
    return web.Response(body=metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def _loader_ctx(app: web.Application):
    """Load the repository before the first request is taken; drain and unload after the last."""
    loader = app[LOADER]
    await loader.start()
    app[STATE].is_started = True
    ready = sum(len(m.ready_versions()) for m in loader.models.values())
    log.info("repository %s: %d model version(s) ready", loader.store.describe(), ready)
    yield
    app[STATE].is_stopping = True
    await loader.close()


async def _close_keyring(app: web.Application) -> None:
    app[KEYRING].close()


def _gate(config: Config, state: ServerState) -> Gate:
    """Authentication, per-key limits and the in-flight bound, from the auth and limits sections."""
    keys_file = Path(config.auth.keys_file) if config.auth.keys_file else None
    return Gate(
        PathPolicy.from_config(config.auth, config.server.host), KeyRing(keys_file, TenantLimiter()),
        InFlight(config.limits.max_in_flight), state, config.server.max_body_bytes,
        config.limits.not_ready_when_saturated,
    )


def create_app(config: Config, store: Store | None = None) -> web.Application:
    state = ServerState()
    gate = _gate(config, state)
    app = web.Application(
        middlewares=[error_middleware, gate_middleware(gate)], client_max_size=config.server.max_body_bytes
    )
    app[KEYRING], app[LIMITS] = gate.keyring, config.limits
    metrics = Metrics()
    loader = HotSwapLoader(store or open_store(config.registry.models, config.registry), config.registry, metrics)
    service = InferenceService(loader, metrics)
    app[CONFIG], app[METRICS], app[LOADER], app[SERVICE], app[STATE] = config, metrics, loader, service, state
    _add_v2_routes(app, V2Handlers(service, app[STATE], metrics))
    app.router.add_get("/metrics", _metrics_handler)
    add_admin_routes(app, loader, service.traffic)
    add_traffic_routes(app, service.traffic)
    add_openai_routes(app, service, metrics)
    add_openapi_routes(app, gate.keyring.is_enabled)
    app.cleanup_ctx.append(_loader_ctx)
    app.on_cleanup.append(_close_keyring)
    add_monitor_routes(app, config.monitor, metrics, loader, service)
    return app
