"""Triton's statistics extension: `/v2/models[/{m}[/versions/{v}]]/stats` and the gRPC ModelStatistics
call, one JSON shape for both (gRPC parses it into ModelStatisticsResponse)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from google.protobuf import json_format

from mlserve.errors import ModelNotFound
from mlserve.monitor.stats import VersionStats
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.served import VersionState
from mlserve.server.grpc_proto import grpc_service_pb2 as pb

_ZERO = {"count": 0, "ns": 0}


def version_stats_dict(model: str, version: str, stats: VersionStats) -> dict[str, Any]:
    compute_infer = stats.compute_infer.to_dict()
    untimed = {"count": compute_infer["count"], "ns": 0}  # see mlserve/monitor/stats.py
    return {
        "name": model,
        "version": version,
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": stats.success.to_dict(), "fail": stats.fail.to_dict(), "queue": stats.queue.to_dict(),
            "compute_input": untimed, "compute_infer": compute_infer, "compute_output": untimed,
            "cache_hit": _ZERO, "cache_miss": _ZERO,
        },
        "batch_stats": [
            {"batch_size": size, "compute_input": {"count": d.count, "ns": 0}, "compute_infer": d.to_dict(),
             "compute_output": {"count": d.count, "ns": 0}}
            for size, d in sorted(stats.batches.items())
        ],
    }


def model_stats(loader: HotSwapLoader, name: str = "", version: str = "") -> list[dict[str, Any]]:
    """Every ready version's statistics, or one model's, or one version's (404 when unknown)."""
    if name and name not in loader.models:
        raise ModelNotFound(f"unknown model {name!r}")
    rows = []
    for model_name, served in sorted(loader.models.items()):
        if name and model_name != name:
            continue
        for number, sv in sorted(served.versions.items()):
            if sv.state is VersionState.READY and (not version or str(number) == version):
                rows.append(version_stats_dict(model_name, str(number), loader.stats.get(model_name, str(number))))
    if version and not rows:
        raise ModelNotFound(f"model {name!r} has no ready version {version!r}")
    return rows


def statistics_message(loader: HotSwapLoader, name: str, version: str) -> pb.ModelStatisticsResponse:
    return json_format.ParseDict({"model_stats": model_stats(loader, name, version)}, pb.ModelStatisticsResponse())


def add_stats_routes(app: web.Application, loader: HotSwapLoader) -> None:
    """Added before the `/v2/models/{model}` routes, so `stats` is not taken for a model name."""

    async def stats(request: web.Request) -> web.Response:
        rows = model_stats(loader, request.match_info.get("model", ""), request.match_info.get("version", ""))
        return web.Response(body=orjson.dumps({"model_stats": rows}), content_type="application/json")

    r = app.router
    r.add_get("/v2/models/stats", stats)
    r.add_get("/v2/models/{model}/stats", stats)
    r.add_get("/v2/models/{model}/versions/{version}/stats", stats)
