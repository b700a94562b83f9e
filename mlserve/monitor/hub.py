"""The monitor the server calls after each response: feeds drift and the prediction log without
making the request wait.

`observe` runs on the event loop and does two dictionary look-ups and at most two `put_nowait`s.
Feature extraction, binning and PSI/KS happen on the drift worker thread; JSON encoding and file
writes on the prediction-log thread. Full queues drop and count, they never block.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlserve.config import MonitorConfig
from mlserve.monitor import features
from mlserve.monitor.drift import DriftMonitor, DriftReport, build_reference
from mlserve.monitor.metrics import Metrics
from mlserve.monitor.npz import read_npz
from mlserve.monitor.predlog import PredictionLog, PredictionLogSettings, PredictionRecord
from mlserve.spec import DriftSettings

log = logging.getLogger("mlserve.monitor")

FEED_INTERVAL_S = 0.1
"""The drift worker wakes this often and bins everything that arrived meanwhile as one chunk: the
request path never wakes a thread, and the per-chunk cost is shared by many requests."""
MAX_CHUNK = 4096


@dataclass(frozen=True, slots=True)
class Observation:
    """One answered request, as the monitor sees it."""

    model: str
    version: str
    req_id: str | None
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    latency_s: float
    routed_by: str


def reference_path(folder: Path, name: str) -> Path:
    """The reference file inside the version folder; ValueError when it (through a link) is outside."""
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"[drift] reference {name!r} lies outside the version folder {folder}")
    return path


def load_reference(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a version's reference.npz, or None when the file is absent."""
    if not path.is_file():
        return None
    return read_npz(path)  # capped: the file may have come by upload


class Monitor:
    """Owns the per-version drift monitors, the drift worker thread and the prediction log."""

    def __init__(self, config: MonitorConfig, metrics: Metrics) -> None:
        self.config = config
        self._metrics = metrics
        self._drift: dict[tuple[str, str], DriftMonitor] = {}
        self._pending: deque[Observation] = deque()
        self._tokens, self._refilled_at = float(config.drift_sample_per_s), time.monotonic()
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._drift_loop, name="mlserve-drift", daemon=True)
        self.prediction_log: PredictionLog | None = None
        if config.prediction_log:
            self.prediction_log = PredictionLog(
                PredictionLogSettings(
                    Path(config.prediction_log), config.log_sample_rate, config.log_inputs,
                    config.prediction_log_max_bytes, config.prediction_log_max_files, config.prediction_log_queue,
                ),
                metrics,
            )

    def _take_sample(self) -> bool:
        """At most `drift_sample_per_s` requests a second reach the drift statistics (a token bucket
        holding one second's worth, so bursts pass whole): under heavier traffic the drift worker's
        share of the GIL stays bounded (it stalled the loop for milliseconds at a time: the c=16 p99
        tail), and a sample of thousands of requests a second describes the inputs as well as all."""
        rate = self.config.drift_sample_per_s
        if rate == 0:
            return True
        now = time.monotonic()
        self._tokens = min(float(rate), self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def start(self) -> None:
        self._worker.start()
        if self.prediction_log is not None:
            self.prediction_log.start()

    def close(self) -> None:
        """Stop the drift worker and write out every sampled prediction (graceful shutdown)."""
        if self._worker.is_alive():
            self._stopping.set()
            self._worker.join(10.0)
        if self.prediction_log is not None:
            self.prediction_log.close()

    def observe(self, obs: Observation) -> None:
        """Called on the loop once a response is ready; never blocks."""
        if (obs.model, obs.version) in self._drift and self._take_sample():
            # deque.append is atomic; the bound is checked without a lock, so it may overshoot by a few.
            if len(self._pending) < self.config.drift_queue:
                self._pending.append(obs)
            else:
                self._metrics.drift_dropped.labels(obs.model, obs.version).inc()
        plog = self.prediction_log
        if plog is not None and plog.should_sample():
            req_id = obs.req_id or uuid.uuid4().hex
            plog.record(PredictionRecord(
                req_id, time.time(), obs.model, obs.version, obs.routed_by, obs.latency_s, obs.inputs, obs.outputs,
            ))

    def add_version(
        self, model: str, version: str, folder: Path, settings: DriftSettings, output_names: tuple[str, ...]
    ) -> None:
        """Create a version's drift monitor (reference.npz in `folder`, else the first rows it serves).

        Called on the loader thread when the version has loaded; a reference file that cannot be read
        is logged and leaves the version without drift statistics, serving as usual ([drift] itself
        was checked when model.toml was read)."""
        key = (model, version)
        self._drift.pop(key, None)
        try:
            if not (self.config.drift and settings.enabled):
                return
            arrays = load_reference(reference_path(folder, settings.reference))
            reference = None
            if arrays is not None:
                outputs = {n: a for n, a in arrays.items() if n in output_names}
                inputs = {n: a for n, a in arrays.items() if n not in output_names}
                feats = features.extract(inputs, outputs, settings.max_columns)
                reference = build_reference(feats, settings, settings.reference)
            self._drift[key] = DriftMonitor(model, version, settings, reference)
        except Exception as exc:
            log.error("drift disabled for model %s version %s: %s", model, version, exc)

    def remove_version(self, model: str, version: str) -> None:
        self._drift.pop((model, version), None)

    def drift(self, model: str, version: str) -> DriftMonitor | None:
        return self._drift.get((model, version))

    def drift_reports(self) -> list[DriftReport]:
        return [m.report() for m in list(self._drift.values())]

    def _drift_loop(self) -> None:
        while not self._stopping.wait(FEED_INTERVAL_S):
            self._drain()
            for monitor in list(self._drift.values()):
                monitor.refresh_if_due()
        self._drain()

    def _drain(self) -> None:
        while self._pending:
            batch = []
            while self._pending and len(batch) < MAX_CHUNK:
                batch.append(self._pending.popleft())
            self._feed(batch)

    def _feed(self, batch: list[Observation]) -> None:
        groups: dict[tuple[str, str], list[Observation]] = {}
        for obs in batch:
            groups.setdefault((obs.model, obs.version), []).append(obs)
        for key, group in groups.items():
            monitor = self._drift.get(key)
            if monitor is None:
                continue
            try:
                monitor.update(_merged_features(group, monitor.settings.max_columns))
            except Exception:
                log.exception("drift update failed for model %s version %s", *key)


def _merged_features(group: list[Observation], max_columns: int) -> dict[str, np.ndarray]:
    """Features of many requests as one chunk: tensors are joined first so extraction runs once;
    requests whose tensors disagree in shape are read one by one, keeping the features all share."""
    try:
        inputs = {n: np.concatenate([o.inputs[n] for o in group]) for n in group[0].inputs}
        outputs = {n: np.concatenate([o.outputs[n] for o in group]) for n in group[0].outputs}
        return features.extract(inputs, outputs, max_columns)
    except (ValueError, KeyError):
        pass
    per_request = [features.extract(o.inputs, o.outputs, max_columns) for o in group]
    names = [n for n in per_request[0] if all(n in f for f in per_request)]
    return {n: np.concatenate([f[n] for f in per_request]) for n in names}
