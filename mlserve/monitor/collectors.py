"""Collectors that read live state at scrape time: version states and in-flight requests, drift
reports, and the GPU. Reading at scrape time means an unloaded version's series simply vanish."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mlserve.monitor.drift import STATUSES, DriftReport

log = logging.getLogger("mlserve.metrics")

MODEL_STATES = ("LOADING", "READY", "UNLOADING", "UNAVAILABLE")


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """What the scrape needs to know about one served version."""

    model: str
    version: str
    state: str
    num_in_flight: int
    queue_capacity: int


class VersionCollector(Collector):
    """mlserve_model_state (one series per state, 1 for the current one), mlserve_in_flight_requests
    and mlserve_queue_capacity."""

    def __init__(self, source: Callable[[], Iterable[VersionStatus]]) -> None:
        self._source = source

    def collect(self):
        state = GaugeMetricFamily(
            "mlserve_model_state", "1 for the state a model version is in.", labels=["model", "version", "state"]
        )
        in_flight = GaugeMetricFamily(
            "mlserve_in_flight_requests", "Requests queued or running on a model version.", labels=["model", "version"]
        )
        statuses = list(self._source())
        for status in statuses:
            for name in MODEL_STATES:
                state.add_metric([status.model, status.version, name], 1.0 if status.state == name else 0.0)
            in_flight.add_metric([status.model, status.version], status.num_in_flight)
        capacity = GaugeMetricFamily(
            "mlserve_queue_capacity", "Requests a version's queue holds before new ones get 429.",
            labels=["model", "version"],
        )
        for status in statuses:
            capacity.add_metric([status.model, status.version], status.queue_capacity)
        yield state
        yield in_flight
        yield capacity


class DriftCollector(Collector):
    """Per-feature PSI and KS, and the one-hot status of each monitored version."""

    def __init__(self, source: Callable[[], Iterable[DriftReport]]) -> None:
        self._source = source

    def collect(self):
        labels = ["model", "version", "feature"]
        psi = GaugeMetricFamily(
            "mlserve_drift_psi", "Population stability index, live window vs reference.", labels=labels
        )
        ks = GaugeMetricFamily(
            "mlserve_drift_ks_statistic", "Two-sample KS statistic, live window vs reference.", labels=labels
        )
        pvalue = GaugeMetricFamily("mlserve_drift_ks_pvalue", "P-value of the KS statistic.", labels=labels)
        status = GaugeMetricFamily(
            "mlserve_drift_status", "1 for a version's drift status (collecting, ok, warn, alert).",
            labels=["model", "version", "status"],
        )
        rows = GaugeMetricFamily(
            "mlserve_drift_window_rows", "Live rows in the drift window.", labels=["model", "version"]
        )
        for report in self._source():
            for feature in report.features:
                key = [report.model, report.version, feature.name]
                psi.add_metric(key, feature.psi)
                ks.add_metric(key, feature.ks_statistic)
                pvalue.add_metric(key, feature.ks_pvalue)
            for name in STATUSES:
                status.add_metric([report.model, report.version, name], 1.0 if report.status == name else 0.0)
            rows.add_metric([report.model, report.version], report.window_rows)
        yield from (psi, ks, pvalue, status, rows)


class GpuCollector(Collector):
    """GPU memory and utilisation from NVML (pynvml) or nvidia-smi; a scrape reads at most every 2 s."""

    CACHE_S = 2.0

    def __init__(self, read: Callable[[], list[tuple[str, float, float, float]]]) -> None:
        self._read = read
        self._cached: list[tuple[str, float, float, float]] = []
        self._read_at = 0.0

    def collect(self):
        if time.monotonic() - self._read_at > self.CACHE_S:
            try:
                self._cached = self._read()
            except Exception as exc:
                log.debug("GPU read failed: %s", exc)
                self._cached = []
            self._read_at = time.monotonic()
        used = GaugeMetricFamily("mlserve_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu"])
        total = GaugeMetricFamily("mlserve_gpu_memory_total_bytes", "GPU memory in all.", labels=["gpu"])
        util = GaugeMetricFamily(
            "mlserve_gpu_utilization_ratio", "Share of time the GPU was busy (0-1).", labels=["gpu"]
        )
        for gpu, used_b, total_b, busy in self._cached:
            used.add_metric([gpu], used_b)
            total.add_metric([gpu], total_b)
            util.add_metric([gpu], busy)
        yield from (used, total, util)


def gpu_reader() -> Callable[[], list[tuple[str, float, float, float]]] | None:
    """A function reading (index, used bytes, total bytes, utilisation) per GPU, or None without one."""
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() > 0:
            return _read_nvml
    except Exception:
        pass
    if shutil.which("nvidia-smi") is not None:
        try:
            if _read_nvidia_smi():
                return _read_nvidia_smi
        except Exception:
            return None
    return None


def _read_nvml() -> list[tuple[str, float, float, float]]:
    import pynvml

    out = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        busy = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
        out.append((str(i), float(memory.used), float(memory.total), busy))
    return out


def _read_nvidia_smi() -> list[tuple[str, float, float, float]]:
    text = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,memory.used,memory.total,utilization.gpu", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, timeout=5, check=True,
    ).stdout
    out = []
    for line in text.strip().splitlines():
        index, used_mib, total_mib, busy = (part.strip() for part in line.split(","))
        out.append((index, float(used_mib) * 2**20, float(total_mib) * 2**20, float(busy) / 100.0))
    return out
