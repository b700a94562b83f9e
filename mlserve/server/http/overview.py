"""The overview the status page and `mlserve status` read: every model and version with its state,
recent traffic, split, rollout, breakers, shadow, experiment and drift, in one JSON document.

It only reads what the loader, the traffic manager, the monitor and the metrics history already
hold; building it changes nothing (the traffic views it calls are the GET views of the admin API).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from mlserve import __version__
from mlserve.dataplane import DataPlane, GenerativeServing, ServedModel, ServedVersion
from mlserve.monitor.history import MetricsHistory
from mlserve.monitor.hub import Monitor
from mlserve.monitor.metrics import Metrics

TOP_FEATURES = 8
"""Worst drifting features listed per version; the rest are named for the histogram chooser."""


@dataclass(frozen=True, slots=True)
class Caller:
    """What the caller may do, so the page shows admin actions only where they would succeed."""

    auth: bool
    admin: bool
    key_name: str | None

    def to_dict(self) -> dict:
        return {"auth": self.auth, "admin": self.admin, "key": self.key_name}


@dataclass(slots=True)
class OverviewSources:
    """Everything the overview reads."""

    plane: DataPlane
    metrics: Metrics
    monitor: Monitor | None
    history: MetricsHistory
    started: float
    is_ready: Callable[[], bool]
    """Whether the server takes traffic now."""
    optimize_runs: Callable[[str], list[dict]] | None = None
    """A model's automatic optimization runs ([optimize] on_new_version), newest first."""


def build_overview(src: OverviewSources, caller: Caller) -> dict:
    load_times = _load_times(src.metrics)
    models = [_model(src, served, load_times) for _, served in src.plane.items()]
    failed = [{"name": name, "versions": [], "reason": reason, "serving": None}
              for name, reason in src.plane.scan_errors()]
    return {
        "server": {"version": __version__, "ready": bool(src.is_ready()), "uptime_s": time.time() - src.started,
                   "time": time.time(), "interval_s": src.history.interval_s},
        "access": caller.to_dict(),
        "models": models + failed,
    }


def _model(src: OverviewSources, served: ServedModel, load_times: dict[tuple[str, str], float]) -> dict:
    name = served.name
    traffic = src.plane.traffic_view(name)
    split = traffic.get("split") or {}
    total = sum(split.values()) or 0.0
    versions = [_version(src, sv, split.get(str(v), 0.0) / total if total else None, load_times)
                for v, sv in sorted(served.versions.items())]
    experiment = src.plane.experiment_view(name) if split else None
    return {
        "name": name,
        "kind": "llm" if any(isinstance(sv.serving, GenerativeServing) for sv in served.versions.values()) else "tensor",
        "serving": _str(served.default_version()),
        "pinned": _str(served.pinned),
        "history": [str(v) for v in served.history],
        "unloaded": served.is_unloaded,
        "reason": "" if served.versions else served.status_reason(),
        "versions": versions,
        "traffic": traffic,
        "experiment": experiment if experiment and experiment.get("versions") else None,
        "optimize": src.optimize_runs(name) if src.optimize_runs is not None else [],
    }


def _version(src: OverviewSources, sv: ServedVersion, weight: float | None,
             load_times: dict[tuple[str, str], float]) -> dict:
    version = str(sv.version)
    return {
        "version": version,
        "state": sv.state.name,
        "reason": sv.reason,
        "device": sv.device,
        "gpu_memory_bytes": sv.gpu_bytes,
        "weight": weight,
        "load_s": load_times.get((sv.model, version)),
        "queue_depth": sv.num_queued,
        "now": src.history.latest(sv.model, version),
        "series": src.history.series(sv.model, version),
        "drift": _drift(src.monitor, sv.model, version),
    }


def _load_times(metrics: Metrics) -> dict[tuple[str, str], float]:
    """How long each version's last load took, as the loader exported it."""
    out = {}
    for metric in metrics.model_load_seconds.collect():
        for sample in metric.samples:
            out[(sample.labels["model"], sample.labels["version"])] = sample.value
    return out


def _drift(monitor: Monitor | None, model: str, version: str) -> dict | None:
    drift = monitor.drift(model, version) if monitor is not None else None
    if drift is None:
        return None
    report = drift.report().to_dict()
    ranked = sorted(report["features"], key=lambda f: f["psi"], reverse=True)
    return {
        "status": report["status"],
        "window_rows": report["window_rows"],
        "reference": report["reference"],
        "thresholds": report["thresholds"],
        "worst": ranked[:TOP_FEATURES],
        "features": [f["name"] for f in report["features"]],
    }


def _str(value: int | None) -> str | None:
    return str(value) if value is not None else None
