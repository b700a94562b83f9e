"""Triton's statistics extension read from the data plane: one JSON shape, which
`/v2/models[/{m}[/versions/{v}]]/stats` answers and the gRPC ModelStatistics call parses into
ModelStatisticsResponse."""

from __future__ import annotations

from typing import Any

from mlserve.dataplane import DataPlane, VersionState
from mlserve.errors import ModelNotFound
from mlserve.monitor.metrics import Metrics
from mlserve.monitor.stats import VersionStats


def _cache_counts(metrics: Metrics | None) -> dict[tuple[str, str, str], int]:
    """Response-cache hits and misses by (model, version, "hit"|"miss"), from the Prometheus counters:
    hits at either level; misses are the lookups that reached the batcher (local misses that the
    shared level did not answer)."""
    by_level: dict[tuple[str, str, str, str], int] = {}
    if metrics is None:
        return {}
    for counter, kind in ((metrics.cache_hits, "hit"), (metrics.cache_misses, "miss")):
        for family in counter.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    by_level[(labels["model"], labels["version"], kind, labels["level"])] = int(sample.value)
    counts: dict[tuple[str, str, str], int] = {}
    for (model, version, kind, level), value in by_level.items():
        if kind == "hit":
            counts[(model, version, "hit")] = counts.get((model, version, "hit"), 0) + value
        elif level == "local":
            shared_hits = by_level.get((model, version, "hit", "shared"), 0)
            counts[(model, version, "miss")] = value - shared_hits
    return counts


def version_stats_dict(model: str, version: str, stats: VersionStats,
                       cache: dict[tuple[str, str, str], int] | None = None) -> dict[str, Any]:
    """Cache hits never reach the batcher: they are counted (without time) apart from success."""
    cache = cache or {}
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
            "cache_hit": {"count": cache.get((model, version, "hit"), 0), "ns": 0},
            "cache_miss": {"count": cache.get((model, version, "miss"), 0), "ns": 0},
        },
        "batch_stats": [
            {"batch_size": size, "compute_input": {"count": d.count, "ns": 0}, "compute_infer": d.to_dict(),
             "compute_output": {"count": d.count, "ns": 0}}
            for size, d in sorted(stats.batches.items())
        ],
    }


def model_stats(plane: DataPlane, metrics: Metrics | None, name: str = "", version: str = "") -> list[dict]:
    """Every ready version's statistics, or one model's, or one version's (404 when unknown)."""
    if name:
        plane.model(name)
    cache, rows = _cache_counts(metrics), []
    for model_name, served in plane.items():
        if name and model_name != name:
            continue
        for number, sv in sorted(served.versions.items()):
            if sv.state is VersionState.READY and (not version or str(number) == version):
                stats = plane.stats(model_name, str(number))
                rows.append(version_stats_dict(model_name, str(number), stats, cache))
    if version and not rows:
        raise ModelNotFound.unknown(name, version, " (or not ready)")
    return rows
